//! `/metrics` (Prometheus text exposition) and `/healthz` over HTTP (axum).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::controller::Shared;

/// Bind `addr` and serve in the background; the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let metrics = shared.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.metrics.render(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let s = shared.clone();
                async move {
                    if s.stop.finishing() {
                        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response()
                    } else {
                        (StatusCode::OK, "ok\n").into_response()
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(bound)
}
