//! [`discard_body`]: reading and dropping what is left of a request that was refused.

use std::time::Duration;

use http_body_util::BodyExt;

/// Reads and drops `body` until it ends, `cap` bytes have gone by or `within` has passed,
/// holding no more than one frame. A server that answers before reading a request (a refusal)
/// and then closes the connection makes a client that is still sending see a reset instead of
/// the answer; draining first lets the answer arrive.
pub async fn discard_body<B>(body: B, cap: usize, within: Duration)
where
    B: http_body::Body + Send,
{
    let mut body = std::pin::pin!(body);
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, bytes::Buf::remaining);
            if seen > cap {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_body_is_read_to_its_end_but_never_past_the_cap_or_the_time() {
        let (mut tx, body) = tokio::io::duplex(64);
        let stream = streamed_body(body);
        // A sender that never stops: the cap ends the drain.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while tx.write_all(&[0u8; 64]).await.is_ok() {}
        });
        let started = Instant::now();
        discard_body(stream, 1 << 16, Duration::from_secs(30)).await;
        assert!(started.elapsed() < Duration::from_secs(10), "stopped at the cap");
        // A sender that goes quiet: the time limit ends the drain.
        let (_tx, quiet) = tokio::io::duplex(64);
        let started = Instant::now();
        discard_body(streamed_body(quiet), 1 << 16, Duration::from_millis(200)).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    /// A body streaming what `reader` yields.
    fn streamed_body(
        reader: tokio::io::DuplexStream,
    ) -> http_body_util::StreamBody<impl futures::Stream<Item = Result<http_body::Frame<bytes::Bytes>, std::io::Error>>>
    {
        let stream = futures::stream::unfold(reader, |mut r| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 64];
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(http_body::Frame::data(bytes::Bytes::from(buf))), r))
                }
            }
        });
        http_body_util::StreamBody::new(stream)
    }
}
