//! The search server: a JSON API and one small page over an opened index.
//!
//! `GET /api/search?q=..&k=..` (or `like=ID`), `POST /api/search` with JSON
//! `{"text": ..}`, `{"image": base64}` or `{"like": id}`, `GET /api/image/{id}`
//! (only files in the index; `?size=N` for a JPEG thumbnail), `GET
//! /api/health` and `/`. Bad requests get a 4xx with `{"error": ...}`.
//! Model work runs on tokio's blocking pool.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use crate::index::LiveIndex;
use crate::search::{self, QueryEncoder};

/// Largest k a request may ask for.
pub const MAX_K: usize = 1000;
/// Longest text query in bytes (a 248-token caption is ~1.5 KB).
pub const MAX_QUERY_BYTES: usize = 20_000;
/// Largest request body (a base64 image of ~12 MB).
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Largest thumbnail edge.
const MAX_THUMB: u32 = 1024;

const PAGE: &str = include_str!("../assets/search.html");

pub struct AppState {
    /// Follows the index's commits (adds, removes, merges) without a restart.
    pub index: LiveIndex,
    /// None when no model could be loaded: then only `like` searches work.
    pub encoder: Option<QueryEncoder>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/health", get(health))
        .route("/api/search", get(search_get).post(search_post))
        .route("/api/image/{id}", get(image))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves until Ctrl-C. Prints `listening on http://ADDR` on stdout once bound
/// (with port 0, the port the system chose).
pub fn run(state: AppState, addr: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        println!("listening on http://{local}");
        use std::io::Write;
        std::io::stdout().flush()?;
        axum::serve(listener, router(Arc::new(state)))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}

struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let index = state.index.get();
    let m = &index.manifest;
    Json(json!({
        "status": "ok",
        "count": m.count,
        "dim": m.dim,
        "dtype": m.dtype,
        "compute_dtype": m.compute_dtype(),
        "model": m.model.path,
        "hnsw": m.hnsw.is_some(),
        "text_search": state.encoder.is_some(),
    }))
}

#[derive(Deserialize)]
struct SearchParams {
    q: Option<String>,
    like: Option<String>,
    k: Option<String>,
    exact: Option<String>,
    ef: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    text: Option<String>,
    /// Base64 (standard alphabet), optionally a `data:` URL.
    image: Option<String>,
    like: Option<u64>,
    k: Option<u64>,
    exact: Option<bool>,
    ef: Option<u64>,
}

/// What to search for, parsed and checked.
enum Want {
    Text(String),
    Image(Vec<u8>),
    Like(u64),
}

struct Request {
    want: Want,
    opts: search::Options,
}

async fn search_get(State(state): State<Arc<AppState>>, params: Result<Query<SearchParams>, QueryRejection>) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad(format!("bad query string: {e}")))?;
    let k = parse_number(p.k.as_deref(), "k")?;
    let ef = parse_number(p.ef.as_deref(), "ef")?;
    let exact = matches!(p.exact.as_deref(), Some("1" | "true" | "yes"));
    let want = match (p.q, p.like) {
        (Some(q), None) => Want::Text(q),
        (None, Some(id)) => Want::Like(id.trim().parse().map_err(|_| ApiError::bad(format!("like must be an id, got '{}'", shorten(&id))))?),
        (Some(_), Some(_)) => return Err(ApiError::bad("give q or like, not both")),
        (None, None) => return Err(ApiError::bad("give q (a text query) or like (an id)")),
    };
    run_search(state, Request { want, opts: options(k, ef, exact)? }).await
}

async fn search_post(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {MAX_BODY_BYTES} bytes"));
    // Refuse from the header, before reading a byte of an oversized body.
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| too_large())?;
    let b: SearchBody = serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("bad JSON body: {e}")))?;
    let want = match (b.text, b.image, b.like) {
        (Some(t), None, None) => Want::Text(t),
        (None, Some(img), None) => Want::Image(decode_base64(&img)?),
        (None, None, Some(id)) => Want::Like(id),
        (None, None, None) => return Err(ApiError::bad("give one of text, image (base64) or like (an id)")),
        _ => return Err(ApiError::bad("give only one of text, image or like")),
    };
    run_search(state, Request { want, opts: options(b.k, b.ef, b.exact.unwrap_or(false))? }).await
}

fn parse_number(v: Option<&str>, name: &str) -> Result<Option<u64>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) => s.trim().parse::<u64>().map(Some).map_err(|_| ApiError::bad(format!("{name} must be a whole number, got '{}'", shorten(s)))),
    }
}

fn options(k: Option<u64>, ef: Option<u64>, exact: bool) -> Result<search::Options, ApiError> {
    let k = k.unwrap_or(10);
    if k == 0 || k > MAX_K as u64 {
        return Err(ApiError::bad(format!("k must be between 1 and {MAX_K}, got {k}")));
    }
    if let Some(ef) = ef {
        if ef == 0 || ef > 10_000 {
            return Err(ApiError::bad(format!("ef must be between 1 and 10000, got {ef}")));
        }
        if exact {
            return Err(ApiError::bad("exact and ef do not go together (ef is the graph's beam)"));
        }
    }
    Ok(search::Options { k: k as usize, exact, ef: ef.map(|e| e as usize) })
}

fn decode_base64(s: &str) -> Result<Vec<u8>, ApiError> {
    let data = match s.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, d)| d).unwrap_or(""),
        None => s,
    };
    base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|e| ApiError::bad(format!("image is not valid base64: {e}")))
}

fn shorten(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() { format!("{cut}...") } else { cut }
}

async fn run_search(state: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    if let Want::Text(t) = &req.want {
        if t.len() > MAX_QUERY_BYTES {
            return Err(ApiError::bad(format!("query is {} bytes; the limit is {MAX_QUERY_BYTES}", t.len())));
        }
        if t.trim().is_empty() {
            return Err(ApiError::bad("query is empty"));
        }
    }
    let joined = tokio::task::spawn_blocking(move || blocking_search(&state, req)).await;
    joined.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("search failed: {e}")))?
}

fn blocking_search(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let start = Instant::now();
    let index = &*state.index.get();
    let need_model = || state.encoder.as_ref().ok_or_else(|| ApiError::bad("this server has no model loaded: only like=ID searches work"));
    let (vector, truncated, query) = match req.want {
        Want::Text(t) => {
            let q = need_model()?.text(&t).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
            (q.vector, q.truncated, json!({ "text": t }))
        }
        Want::Image(bytes) => {
            let q = need_model()?.image_bytes(&bytes, "posted image").map_err(|e| ApiError::bad(format!("{e:#}")))?;
            (q.vector, false, json!({ "image_bytes": bytes.len() }))
        }
        Want::Like(id) => {
            let row = index.row_of_id(id).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no entry with id {id}")))?;
            (index.row_vec(row), false, json!({ "like": id }))
        }
    };
    let method = search::method(index, &req.opts);
    let hits = search::search(index, &[vector], &req.opts).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let body = json!({
        "query": query,
        "truncated": truncated,
        "method": method.to_string(),
        "count": index.len(),
        "dtype": index.manifest.dtype,
        "compute_dtype": index.manifest.compute_dtype(),
        "took_ms": start.elapsed().as_secs_f64() * 1000.0,
        "results": hits.into_iter().next().unwrap_or_default(),
    });
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct ImageParams {
    size: Option<String>,
}

/// Serves a file of the index by id; anything that is not an id of an
/// entry is 404, so no path from the request ever reaches the filesystem.
async fn image(State(state): State<Arc<AppState>>, Path(id): Path<String>, params: Result<Query<ImageParams>, QueryRejection>) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such image");
    let id: u64 = id.parse().map_err(|_| not_found())?;
    let index = state.index.get();
    let row = index.row_of_id(id).ok_or_else(not_found)?;
    let size = match params.ok().and_then(|Query(p)| p.size) {
        Some(s) => Some(s.parse::<u32>().ok().filter(|&n| n > 0 && n <= MAX_THUMB).ok_or_else(|| ApiError::bad(format!("size must be 1..={MAX_THUMB}")))?),
        None => None,
    };
    let entry = index.entry(row).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let path = index.resolve(&entry);
    let served = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, &'static str), ApiError> {
        if crate::index::is_url(&path.to_string_lossy()) {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "this entry is a URL, not a local file"));
        }
        let bytes = std::fs::read(&path).map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "the image file is gone"))?;
        if let Some(size) = size {
            if let Some(jpeg) = thumbnail(&bytes, size) {
                return Ok((jpeg, "image/jpeg"));
            }
        }
        Ok((bytes, content_type(&path)))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))??;
    Ok(([(header::CONTENT_TYPE, served.1), (header::CACHE_CONTROL, "max-age=3600")], served.0).into_response())
}

/// A JPEG at most `size` pixels on its longer edge (None if it cannot be decoded).
fn thumbnail(bytes: &[u8], size: u32) -> Option<Vec<u8>> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?;
    let img = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode())).ok()?.ok()?;
    let small = img.thumbnail(size, size).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82).encode_image(&small).ok()?;
    Some(out)
}

fn content_type(path: &std::path::Path) -> &'static str {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        _ => "application/octet-stream",
    }
}
