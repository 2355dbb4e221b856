//! The demo's sample upstream: patients, maps and reports, with realistic fake PII/PHI.
//! Every name, number and address here is invented.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::error::{full_body, Body};

pub fn patients() -> Value {
    json!([
        {
            "id": 1, "mrn": "MRN-204518", "name": {"first": "Maria", "last": "Gonzales"},
            "dob": "1984-03-09", "age": 42, "ssn": "123-45-6789",
            "email": "maria.gonzales@example.com", "phone": "617-555-0142",
            "address": {"street": "12 Elm St", "city": "Cambridge", "state": "MA", "zip": "02139"},
            "diagnosis": "Type 2 diabetes", "notes": "Prefers calls at 617-555-0142 after 5pm."
        },
        {
            "id": 2, "mrn": "MRN-381907", "name": {"first": "James", "last": "O'Neil"},
            "dob": "1931-11-23", "age": 95, "ssn": "987-65-4320",
            "email": "jim.oneil@example.org", "phone": "(413) 555-0199",
            "address": {"street": "4 Harbor Rd", "city": "Sample", "state": "NH", "zip": "03601"},
            "diagnosis": "Hypertension", "notes": "Daughter's email: kate.oneil@example.net"
        },
        {
            "id": 3, "mrn": "MRN-550231", "name": {"first": "Aiko", "last": "Tanaka"},
            "dob": "1999-07-30", "age": 27, "ssn": "078-05-1121",
            "email": "aiko.t@example.com", "phone": "+1 206 555 0163",
            "address": {"street": "900 Pine Ave", "city": "Seattle", "state": "WA", "zip": "98101"},
            "diagnosis": "Asthma", "notes": "Card on file 4111 1111 1111 1111."
        }
    ])
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full_body(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn route(method: &Method, path: &str) -> Response<Body> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let all = patients();
    match (method, segs.as_slice()) {
        (&Method::GET, ["healthz"]) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, ["api", "patients"]) => {
            json_response(StatusCode::OK, &json!({"patients": all}))
        }
        (&Method::GET, ["api", "patients", id]) => {
            match all
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["id"].as_u64().is_some_and(|n| id.parse() == Ok(n)))
            {
                Some(p) => json_response(StatusCode::OK, p),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "no such patient", "id": id}),
                ),
            }
        }
        (&Method::GET, ["api", "reports"]) => json_response(
            StatusCode::OK,
            &json!({"reports": [{"id": 7, "title": "Readmissions Q3", "rows": 1204}]}),
        ),
        (&Method::POST, ["api", "reports", id, "export"]) => json_response(
            StatusCode::OK,
            &json!({"report": id, "format": "json", "patients": all}),
        ),
        (&Method::GET, ["api", "maps", id, "embed"]) => json_response(
            StatusCode::OK,
            &json!({"map": id, "title": "Clinic visits by county", "embed_url": format!("https://maps.example/embed/{id}")}),
        ),
        (&Method::PUT, ["api", "maps", id, "embed"]) => {
            json_response(StatusCode::OK, &json!({"map": id, "saved": true}))
        }
        (&Method::POST, ["api", "maps", id, "publish"]) => {
            json_response(StatusCode::OK, &json!({"map": id, "published": true}))
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// Serves the sample API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                Ok::<_, Infallible>(route(req.method(), req.uri().path()))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

pub async fn bind() -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
