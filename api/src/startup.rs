//! Builds the facade from its settings and a bound listener, so `main` stays a few lines and
//! tests can run the real application on port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::http::Method;
use actix_web::middleware::{Condition, ErrorHandlers};
use actix_web::{web, App, HttpResponse, HttpServer};
use shared::{JobId, Settings};

use crate::auth::{Caller, Keyring};
use crate::broker::Broker;
use crate::io::{Io, IoRuntime};
use crate::limits::Limits;
use crate::notifier::Notifier;
use crate::routes::{cancel, events, fallback, health, jobs, submit};
use crate::signing::Signer;
use crate::status_store::{StatusStore, StoreError};

/// What every request handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: StatusStore,
    pub broker: Broker,
    pub estimates: crate::estimates::Estimates,
    pub notifier: Notifier,
    pub keyring: Keyring,
    pub signer: Signer,
    pub limits: Limits,
    pub overview: crate::routes::overview::OverviewCache,
    /// The job types the workers registered (refreshed in the background).
    pub job_types: crate::job_types::JobTypes,
}

impl AppState {
    /// The query to put on `Location`s that point at `caller`'s job `id`: the signature the
    /// request came with, or a fresh one when URL signing is configured.
    pub fn location_query(&self, caller: &Caller, id: &JobId) -> Option<String> {
        match &caller.signed {
            Some(query) => Some(query.clone()),
            None if self.signer.enabled() => self.signer.sign(&caller.tenant, id),
            None => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot bind {0}: {1}")]
    Bind(String, std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot start the HTTP server: {0}")]
    Server(std::io::Error),
}

pub struct Application {
    port: u16,
    server: Server,
    // Dropped after the server has stopped: the connections live on it.
    _io: IoRuntime,
}

impl Application {
    /// Binds the configured address (port 0 picks a free one) and builds the server.
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let listener =
            TcpListener::bind(&address).map_err(|e| StartupError::Bind(address.clone(), e))?;
        Self::with_listener(settings, listener)
    }

    pub fn with_listener(settings: Settings, listener: TcpListener) -> Result<Self, StartupError> {
        let port = listener.local_addr().map_err(StartupError::Server)?.port();
        crate::metrics::init();
        let (io, io_runtime) = Io::start().map_err(StartupError::Server)?;
        let store = StatusStore::new(&settings.redis, &settings.jobs, io.clone())?;
        let broker = Broker::new(settings.amqp.clone(), io.clone());
        // Connect now so the first request does not pay for it; failures are retried lazily.
        // A TLS failure (a certificate or host name to fix) is an error, said at once.
        {
            let broker = broker.clone();
            io.spawn(async move {
                match broker.check().await {
                    Err(e) if e.is_tls() => tracing::error!("rabbitmq: {e}; retrying"),
                    Err(e) => {
                        tracing::warn!(error = %e, "broker not reachable at start; will retry")
                    }
                    Ok(()) => {}
                }
            });
            let redis = settings.redis.clone();
            io.spawn(async move { shared::redis_conn::log_reachability(&redis).await });
        }
        let notifier = Notifier::new(&settings.redis, io.clone())?;
        let keyring = Keyring::new(&settings.auth).map_err(StartupError::Config)?;
        let signer = Signer::new(&settings.signing).map_err(StartupError::Config)?;
        if !keyring.enabled() {
            tracing::warn!("authentication is off: every request acts as the default tenant, with operator rights");
        }
        let job_types = crate::job_types::JobTypes::start(
            store.clone(),
            &io,
            settings.jobs.type_retention_seconds,
        );
        broker.follow(job_types.clone());
        let estimates = crate::estimates::Estimates::new(
            store.clone(),
            broker.clone(),
            job_types.clone(),
            &settings,
        );
        let state = web::Data::new(AppState {
            settings: Arc::new(settings.clone()),
            store,
            broker,
            estimates,
            notifier,
            keyring,
            signer,
            limits: Limits::new(&settings.limits),
            overview: Default::default(),
            job_types: job_types.clone(),
        });
        let cors_settings = settings.cors.clone();
        let header_limit = settings.http.max_header_bytes;
        let body_limit = settings.http.body_limit_bytes;
        let openapi = web::Data::new(crate::openapi::OpenApiDocument::new(&settings, job_types));
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                // Our own body reader enforces the limit; this keeps actix's extractors in line.
                .app_data(web::PayloadConfig::new(body_limit))
                // HEAD is a GET without a body (RFC 9110, 9.3.2): route it as one; the HTTP
                // layer, which parsed a HEAD, sends no body.
                .wrap_fn(|mut req, srv| {
                    if req.method() == Method::HEAD {
                        req.head_mut().method = Method::GET;
                    }
                    srv.call(req)
                })
                .wrap(ErrorHandlers::new().default_handler(fallback::problem_for_bare_errors))
                .wrap(Condition::new(
                    !cors_settings.allowed_origins.is_empty(),
                    crate::cors::middleware(&cors_settings),
                ))
                .wrap_fn(crate::routes::metrics::record)
                .wrap_fn(move |req, srv| crate::limits::guard_headers(req, srv, header_limit))
                .service(
                    web::resource("/v1/jobs")
                        .route(web::post().to(submit::submit))
                        .route(web::get().to(crate::routes::list::list))
                        .default_service(fallback::method_not_allowed("GET, HEAD, POST")),
                )
                .service(
                    web::resource("/v1/jobs/{id}")
                        .route(web::get().to(jobs::status))
                        .route(web::delete().to(cancel::cancel))
                        .default_service(fallback::method_not_allowed("GET, HEAD, DELETE")),
                )
                .service(
                    web::resource("/v1/jobs/{id}/events")
                        .route(web::get().to(events::events))
                        .default_service(fallback::method_not_allowed("GET, HEAD")),
                )
                // The backend of a declared `http` type, with its signed Progress-Url.
                .service(
                    web::resource("/v1/jobs/{id}/progress")
                        .route(web::post().to(crate::routes::progress::progress))
                        .default_service(fallback::method_not_allowed("POST")),
                )
                .service(
                    web::resource("/v1/jobs/{id}/result")
                        .route(web::get().to(jobs::result))
                        .default_service(fallback::method_not_allowed("GET, HEAD")),
                )
                .service(
                    web::resource("/v1/job-types")
                        .route(web::get().to(crate::routes::job_types::list))
                        .default_service(fallback::method_not_allowed("GET, HEAD")),
                )
                // Operators only (checked by the handler).
                .service(
                    web::resource("/v1/workers")
                        .route(web::get().to(crate::routes::workers::list))
                        .default_service(fallback::method_not_allowed("GET, HEAD")),
                )
                // Operators only (checked by the handler).
                .service(
                    web::resource("/v1/overview")
                        .route(web::get().to(crate::routes::overview::overview))
                        .default_service(fallback::method_not_allowed("GET, HEAD")),
                )
                // The operators' web page and its assets. They hold no data: the page reads
                // everything through the API above, sending the key the operator types in as
                // `Authorization: Bearer`. A browser cannot send that header when it navigates
                // to /dashboard, so if these routes require a key, they need another way in
                // (e.g. a signed URL); the data endpoints are what must be protected, and are:
                // /v1/overview and /v1/workers answer 403 to keys that are not operators.
                .service(
                    web::scope("/dashboard")
                        .wrap(actix_web::middleware::Compress::default())
                        .service(
                            web::resource("")
                                .route(web::get().to(crate::routes::dashboard::page))
                                .default_service(fallback::method_not_allowed("GET, HEAD")),
                        )
                        .service(
                            web::resource("/{asset}")
                                .route(web::get().to(crate::routes::dashboard::asset))
                                .default_service(fallback::method_not_allowed("GET, HEAD")),
                        ),
                )
                .service(
                    web::resource("/healthz")
                        .route(web::get().to(health::healthz))
                        .default_service(fallback::method_not_allowed("GET, HEAD")),
                )
                .service(
                    web::resource("/readyz")
                        .route(web::get().to(health::readyz))
                        .default_service(fallback::method_not_allowed("GET, HEAD")),
                )
                .service(
                    web::resource("/metrics")
                        .route(web::get().to(crate::routes::metrics::metrics))
                        .default_service(fallback::method_not_allowed("GET, HEAD")),
                )
                .service(
                    web::resource("/openapi.json")
                        .app_data(openapi.clone())
                        .route(web::get().to(crate::openapi::openapi_json))
                        .default_service(fallback::method_not_allowed("GET, HEAD")),
                )
                // Swagger UI over /openapi.json; its assets are compiled in (vendored).
                .service(web::resource("/docs").route(web::get().to(|| async {
                    HttpResponse::MovedPermanently()
                        .insert_header((actix_web::http::header::LOCATION, "/docs/"))
                        .finish()
                })))
                .service(
                    utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
                        .config(utoipa_swagger_ui::Config::new(["/openapi.json"])),
                )
                .default_service(web::to(fallback::not_found))
        })
        .shutdown_timeout(settings.http.shutdown_grace_seconds)
        .client_request_timeout(Duration::from_secs(10));
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        let server = server.listen(listener).map_err(StartupError::Server)?.run();
        Ok(Application {
            port,
            server,
            _io: io_runtime,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT/SIGTERM, then drains in-flight requests (up to the grace period).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
