//! The catalog: products (seeded at first start) and users' carts, in the service's SQLite database.
//!
//! - `GET /products?category=&limit=`: products, by id.
//! - `GET /products/search?q=`: products whose name or description contains `q` (1-64 characters).
//! - `GET /products/{id}`: one product; 404 when unknown.
//! - `GET /carts/{user}`: the cart with product names and prices; `DELETE /carts/{user}` empties it.
//! - `POST /carts/{user}/items` `{"product_id", "quantity"}`: adds to the cart (quantity 1-99).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::services::ServiceContext;
use crate::{Error, Result};

/// A product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Its id.
    pub id: i64,
    /// Stock-keeping unit, as inventory knows it.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Category.
    pub category: String,
    /// Price in cents.
    pub price_cents: i64,
}

/// A cart line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CartItem {
    /// The product.
    pub product_id: i64,
    /// Its SKU.
    pub sku: String,
    /// Its name.
    pub name: String,
    /// How many.
    pub quantity: i64,
    /// Unit price in cents.
    pub price_cents: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL, description TEXT NOT NULL,
    category TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cart_items (
    user TEXT NOT NULL, product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL,
    PRIMARY KEY (user, product_id));
";

const SEED: &[(&str, &str, &str, i64)] = &[
    ("Trail running shoes", "Light shoes with a grippy sole for muddy trails", "shoes", 12900),
    ("Road running shoes", "Cushioned shoes for long runs on asphalt", "shoes", 11900),
    ("Hiking boots", "Waterproof leather boots for rocky paths", "shoes", 18900),
    ("Merino t-shirt", "Soft wool shirt that does not smell after a week", "clothing", 5900),
    ("Rain jacket", "Packable waterproof jacket with taped seams", "clothing", 14900),
    ("Down jacket", "Warm and light jacket for cold evenings", "clothing", 21900),
    ("Running shorts", "Shorts with a zip pocket for keys", "clothing", 3900),
    ("Wool socks", "Cushioned socks for hiking boots", "clothing", 1900),
    ("Headlamp", "Rechargeable 400 lumen headlamp", "gear", 4900),
    ("Water bottle", "Insulated steel bottle, one litre", "gear", 2900),
    ("Trekking poles", "Folding carbon poles, 300 g the pair", "gear", 8900),
    ("Daypack 20 l", "Small backpack with a hydration sleeve", "gear", 7900),
    ("Backpack 45 l", "Trekking backpack with an adjustable back", "gear", 16900),
    ("Tent for two", "Freestanding tent, 1.8 kg", "camping", 34900),
    ("Sleeping bag", "Down sleeping bag rated to -5 C", "camping", 27900),
    ("Sleeping mat", "Inflatable mat, R-value 4", "camping", 11900),
    ("Camping stove", "Gas stove that boils a litre in three minutes", "camping", 6900),
    ("Cook set", "Titanium pot and mug", "camping", 5400),
    ("Water filter", "Squeeze filter for streams", "camping", 3900),
    ("First aid kit", "Blister plasters, bandages and tape", "gear", 2400),
    ("Sun glasses", "Category 3 glasses for high altitude", "gear", 8900),
    ("Energy bars", "A box of twelve oat and honey bars", "food", 1800),
    ("Trail mix", "Nuts and dried fruit, 500 g", "food", 900),
    ("Map of the Alps", "Waterproof map, 1:50 000", "books", 1500),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    category: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddItem {
    product_id: i64,
    quantity: i64,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn internal(e: Error) -> Response {
    tracing::error!(error = %e, "catalog request failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "catalog database unavailable")
}

const PRODUCT_COLUMNS: &str = "id, sku, name, description, category, price_cents";

fn product(row: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: row.get(0)?,
        sku: row.get(1)?,
        name: row.get(2)?,
        description: row.get(3)?,
        category: row.get(4)?,
        price_cents: row.get(5)?,
    })
}

/// Creates the tables and seeds the products when there are none.
pub fn prepare(db: &Db) -> Result<()> {
    db.migrate(SCHEMA)?;
    let mut seed =
        String::from("INSERT OR IGNORE INTO products (id, sku, name, description, category, price_cents) VALUES ");
    let values: Vec<String> = SEED
        .iter()
        .enumerate()
        .map(|(i, (name, desc, cat, price))| {
            format!("({}, 'SKU-{:04}', '{name}', '{desc}', '{cat}', {price})", i + 1, i + 1)
        })
        .collect();
    seed.push_str(&values.join(", "));
    db.migrate(&seed)
}

async fn list(
    State(db): State<Db>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let limit = i64::from(q.limit.unwrap_or(50).min(200));
    let sql =
        format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE (?1 IS NULL OR category = ?1) ORDER BY id LIMIT ?2");
    let text = sql.clone();
    let result = db
        .call("SELECT", "products", &text, move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            stmt.query_map(rusqlite::params![q.category, limit], product)?.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await;
    match result {
        Ok(products) => Json(products).into_response(),
        Err(e) => internal(e),
    }
}

async fn search(
    State(db): State<Db>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let term = q.q.trim().to_owned();
    if term.is_empty() || term.chars().count() > 64 {
        return error(StatusCode::BAD_REQUEST, "q must be 1-64 characters");
    }
    let sql = format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE name LIKE ?1 ESCAPE '\\' OR description LIKE ?1 ESCAPE '\\' ORDER BY id LIMIT 50"
    );
    let text = sql.clone();
    let pattern = format!("%{}%", term.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let result = db
        .call("SELECT", "products", &text, move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            stmt.query_map([pattern], product)?.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await;
    match result {
        Ok(products) => Json(products).into_response(),
        Err(e) => internal(e),
    }
}

async fn get_product(State(db): State<Db>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, format!("product id must be an integer, got {id:?}"));
    };
    let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?1");
    let text = sql.clone();
    let result = db
        .call("SELECT", "products", &text, move |c| {
            use rusqlite::OptionalExtension;
            c.prepare_cached(&sql)?.query_row([id], product).optional()
        })
        .await;
    match result {
        Ok(Some(p)) => Json(p).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no product {id}")),
        Err(e) => internal(e),
    }
}

fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 64 && user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

async fn get_cart(State(db): State<Db>, Path(user): Path<String>) -> Response {
    if !valid_user(&user) {
        return error(StatusCode::BAD_REQUEST, "invalid user");
    }
    const SQL: &str = "SELECT p.id, p.sku, p.name, c.quantity, p.price_cents FROM cart_items c \
                       JOIN products p ON p.id = c.product_id WHERE c.user = ?1 ORDER BY p.id";
    let result = db
        .call("SELECT", "cart_items", SQL, move |c| {
            let mut stmt = c.prepare_cached(SQL)?;
            stmt.query_map([user], |r| {
                Ok(CartItem {
                    product_id: r.get(0)?,
                    sku: r.get(1)?,
                    name: r.get(2)?,
                    quantity: r.get(3)?,
                    price_cents: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await;
    match result {
        Ok(items) => {
            let total: i64 = items.iter().map(|i| i.quantity * i.price_cents).sum();
            Json(serde_json::json!({ "items": items, "total_cents": total })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn add_item(
    State(db): State<Db>,
    Path(user): Path<String>,
    body: Result<Json<AddItem>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !valid_user(&user) {
        return error(StatusCode::BAD_REQUEST, "invalid user");
    }
    let Json(item) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if !(1..=99).contains(&item.quantity) {
        return error(StatusCode::BAD_REQUEST, "quantity must be 1-99");
    }
    const SQL: &str = "INSERT INTO cart_items (user, product_id, quantity) SELECT ?1, id, ?3 FROM products WHERE id = ?2 \
                       ON CONFLICT (user, product_id) DO UPDATE SET quantity = min(99, quantity + excluded.quantity)";
    let result = db
        .call("INSERT", "cart_items", SQL, move |c| {
            c.prepare_cached(SQL)?.execute(rusqlite::params![user, item.product_id, item.quantity])
        })
        .await;
    match result {
        Ok(0) => error(StatusCode::NOT_FOUND, format!("no product {}", item.product_id)),
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

async fn clear_cart(State(db): State<Db>, Path(user): Path<String>) -> Response {
    if !valid_user(&user) {
        return error(StatusCode::BAD_REQUEST, "invalid user");
    }
    const SQL: &str = "DELETE FROM cart_items WHERE user = ?1";
    match db.call("DELETE", "cart_items", SQL, move |c| c.prepare_cached(SQL)?.execute([user])).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

/// The catalog's routes over `db` (prepared with [`prepare`]).
pub fn routes(db: Db) -> axum::Router {
    axum::Router::new()
        .route("/products", get(list))
        .route("/products/search", get(search))
        .route("/products/{id}", get(get_product))
        .route("/carts/{user}", get(get_cart).delete(clear_cart))
        .route("/carts/{user}/items", post(add_item))
        .with_state(db)
}

/// Runs the catalog.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    let db = ctx.db()?;
    prepare(&db)?;
    crate::services::serve(&ctx, routes(db)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn call(app: &axum::Router, method: &str, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn products_carts_and_bad_input() {
        let db = Db::in_memory("catalog").unwrap();
        prepare(&db).unwrap();
        prepare(&db).unwrap(); // idempotent
        let app = routes(db);
        let (s, all) = call(&app, "GET", "/products", "").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(all.as_array().unwrap().len(), SEED.len());
        let (_, shoes) = call(&app, "GET", "/products?category=shoes&limit=2", "").await;
        assert_eq!(shoes.as_array().unwrap().len(), 2);
        let (_, found) = call(&app, "GET", "/products/search?q=jacket", "").await;
        let names: Vec<&str> = found.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Rain jacket", "Down jacket"]);
        assert_eq!(call(&app, "GET", "/products/search?q=100%25", "").await.1.as_array().unwrap().len(), 0);
        assert_eq!(call(&app, "GET", "/products/search?q=", "").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "GET", "/products/3", "").await.1["name"], "Hiking boots");
        assert_eq!(call(&app, "GET", "/products/999", "").await.0, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "GET", "/products/abc", "").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "GET", "/products?limit=x", "").await.0, StatusCode::BAD_REQUEST);

        let add = |id: i64, q: i64| format!(r#"{{"product_id":{id},"quantity":{q}}}"#);
        assert_eq!(call(&app, "POST", "/carts/ann/items", &add(3, 1)).await.0, StatusCode::NO_CONTENT);
        assert_eq!(call(&app, "POST", "/carts/ann/items", &add(3, 2)).await.0, StatusCode::NO_CONTENT);
        assert_eq!(call(&app, "POST", "/carts/ann/items", &add(10, 1)).await.0, StatusCode::NO_CONTENT);
        assert_eq!(call(&app, "POST", "/carts/ann/items", &add(999, 1)).await.0, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "POST", "/carts/ann/items", &add(3, 0)).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "POST", "/carts/ann/items", "{}").await.0, StatusCode::BAD_REQUEST);
        let (_, cart) = call(&app, "GET", "/carts/ann", "").await;
        assert_eq!(cart["items"][0]["quantity"], 3);
        assert_eq!(cart["total_cents"], 3 * 18900 + 2900);
        assert_eq!(call(&app, "GET", "/carts/bob", "").await.1["items"].as_array().unwrap().len(), 0);
        assert_eq!(call(&app, "DELETE", "/carts/ann", "").await.0, StatusCode::NO_CONTENT);
        assert_eq!(call(&app, "GET", "/carts/ann", "").await.1["total_cents"], 0);
        assert_eq!(call(&app, "GET", "/carts/a%20b", "").await.0, StatusCode::BAD_REQUEST);
    }
}
