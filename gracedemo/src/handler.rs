//! The demo's handler, as Go's `gracedemo` and `net/http` answer: `/sleep/` sleeps for the
//! `duration` form value and says who answered; `/sleep` redirects to `/sleep/` as Go's
//! `ServeMux` does; anything else is Go's 404.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::duration::parse_duration;

/// Go's limit on a form body (`maxFormSize`).
const MAX_FORM: usize = 10 << 20;

/// One of the demo's three servers: its padded name and the process's start time.
#[derive(Clone)]
pub struct Sleep {
    name: &'static str,
    started: Arc<str>,
}

impl Sleep {
    /// A handler answering as `name` (`"Zero  "`, `"First "`, `"Second"`).
    pub fn new(name: &'static str, started: Arc<str>) -> Sleep {
        Sleep { name, started }
    }

    /// Answers one request.
    pub async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path();
        if path == "/sleep" {
            let mut to = "/sleep/".to_owned();
            if let Some(q) = req.uri().query() {
                to.push('?');
                to.push_str(q);
            }
            return Ok(redirect(&to, req.method()));
        }
        if !path.starts_with("/sleep/") {
            return Ok(plain(StatusCode::NOT_FOUND, "404 page not found\n".into()));
        }
        let duration = match form_value(req, "duration").await {
            Ok(v) => v.unwrap_or_default(),
            Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, format!("{e}\n"))),
        };
        let nanos = match parse_duration(&duration) {
            Ok(n) => n,
            Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, format!("{e}\n"))),
        };
        if nanos > 0 {
            tracing::debug!("sleeping for {duration} from pid {}", std::process::id());
            let d = Duration::from_nanos(nanos as u64);
            match tokio::time::Instant::now().checked_add(d) {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending::<()>().await,
            }
        }
        let body = format!(
            "{} started at {} slept for {nanos} nanoseconds from pid {}.\n",
            self.name,
            self.started,
            std::process::id()
        );
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok(r)
    }
}

/// Go's `Request.FormValue`: the first value from an urlencoded body (POST, PUT, PATCH), else
/// from the query.
async fn form_value(req: Request<Incoming>, key: &str) -> Result<Option<String>, String> {
    let first = |bytes: &[u8]| {
        form_urlencoded::parse(bytes)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let from_query = req.uri().query().and_then(|q| first(q.as_bytes()));
    let is_form = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok(from_query);
    }
    let body = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|_| "http: POST too large".to_owned())?
        .to_bytes();
    Ok(first(&body).or(from_query))
}

/// Go's `http.Error`.
fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// Go's `http.Redirect` with 301, as `ServeMux` sends for a path missing its slash.
fn redirect(to: &str, method: &Method) -> Response<Full<Bytes>> {
    let body = if *method == Method::GET || *method == Method::HEAD {
        format!("<a href=\"{}\">Moved Permanently</a>.\n\n", html_escape(to))
    } else {
        String::new()
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(LOCATION, v);
    }
    if *method == Method::GET || *method == Method::HEAD {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    }
    r
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}
