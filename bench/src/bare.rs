//! The bare-handler baseline: actix-web with the facade's routes and nothing behind them. It
//! answers `POST /v1/jobs` and `GET /v1/jobs/{id}` with `202`, the same headers and a JSON body
//! of the same size as the facade's answers, from memory, so the difference to the facade is
//! what the facade does per request (validation, Redis, the broker, serialisation).

use actix_web::http::header;
use actix_web::{web, App, HttpResponse, HttpServer};

/// A JSON object of exactly `size` bytes (at least 12).
pub fn json_of_size(size: usize) -> Vec<u8> {
    let pad = size.saturating_sub(r#"{"pad":""}"#.len());
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad)).into_bytes()
}

struct Bodies {
    post: web::Bytes,
    get: web::Bytes,
}

fn accepted(body: &web::Bytes) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((
            header::LOCATION,
            "/v1/jobs/00000000-0000-4000-8000-000000000000",
        ))
        .insert_header((header::RETRY_AFTER, "1"))
        .insert_header((header::ETAG, "\"0123456789abcdef\""))
        .content_type("application/json")
        .body(body.clone())
}

async fn submit(_body: web::Bytes, bodies: web::Data<Bodies>) -> HttpResponse {
    accepted(&bodies.post)
}

async fn status(_id: web::Path<String>, bodies: web::Data<Bodies>) -> HttpResponse {
    accepted(&bodies.get)
}

/// Serves on 127.0.0.1:`port` with `workers` HTTP workers until killed.
pub fn serve(port: u16, workers: usize, post_size: usize, get_size: usize) -> std::io::Result<()> {
    let bodies = web::Data::new(Bodies {
        post: web::Bytes::from(json_of_size(post_size)),
        get: web::Bytes::from(json_of_size(get_size)),
    });
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(bodies.clone())
                .route("/v1/jobs", web::post().to(submit))
                .route("/v1/jobs/{id}", web::get().to(status))
        })
        .workers(workers)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_have_the_asked_size() {
        for size in [12, 100, 345] {
            let body = super::json_of_size(size);
            assert_eq!(body.len(), size);
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        }
    }
}
