//! The HTTP API of a Mirage that does not lead (store backend etcd): `/healthz`,
//! `/v1/overview` (role, leader, why) and `/metrics` answer here; every other request gets
//! `307 Temporary Redirect` to the same path on the leader's API (a JSON body names the
//! leader), or `503` while no leader is known. Nothing here reads or writes Mirage state:
//! only the leader has it.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;

use super::status::HA;

struct State {
    mirage_id: String,
    token: String,
}

fn authorized(req: &HttpRequest, token: &str) -> bool {
    if token.is_empty() {
        return true;
    }
    req.headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(crate::api::bearer)
        .is_some_and(|t| crate::api::constant_eq(t, token))
}

fn overview(st: &State) -> serde_json::Value {
    let ha = HA.get();
    json!({
        "mirage_id": st.mirage_id,
        "role": ha.as_ref().map_or("follower", |h| h.role),
        "leader": ha.as_ref().and_then(|h| h.leader.clone()),
        "ha": ha,
        "ghosts_connected": 0,
        "intents_active": 0,
    })
}

async fn handle(req: HttpRequest, st: web::Data<State>) -> HttpResponse {
    let path = req.path();
    if path == "/healthz" {
        let role = HA.get().map_or("follower", |h| h.role);
        return HttpResponse::Ok()
            .json(json!({"ok": true, "now_ms": shared::now_ms(), "role": role}));
    }
    if matches!(path, "/v1/overview" | "/metrics") && !authorized(&req, &st.token) {
        return HttpResponse::Unauthorized()
            .json(json!({"error": "missing or wrong bearer token (Authorization: Bearer …)"}));
    }
    if path == "/v1/overview" {
        return HttpResponse::Ok().json(overview(&st));
    }
    if path == "/metrics" {
        let mut out = String::new();
        crate::metrics::render(&mut out, &[]);
        return HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(out);
    }
    let ha = HA.get();
    let role = ha.as_ref().map_or("follower", |h| h.role);
    let leader = ha.and_then(|h| h.leader).filter(|l| !l.api.is_empty());
    match leader {
        Some(l) if l.mirage_id == st.mirage_id => HttpResponse::ServiceUnavailable().json(json!({
            "error": format!("mirage {} has just become the leader and is recovering its state from etcd; try again", st.mirage_id),
        })),
        Some(l) => {
            let q = req.query_string();
            let location = if q.is_empty() {
                format!("http://{}{}", l.api, path)
            } else {
                format!("http://{}{}?{q}", l.api, path)
            };
            HttpResponse::TemporaryRedirect()
                .insert_header(("location", location.clone()))
                .json(json!({
                    "error": format!("mirage {} is a {role}, not the leader: the leader is {} (api {}, session {}); this request goes to {location}", st.mirage_id, l.mirage_id, l.api, l.session),
                    "leader": l,
                }))
        }
        _ => HttpResponse::ServiceUnavailable().json(json!({
            "error": format!("mirage {} is a {role} and no leader is known yet (etcd election in progress); try again", st.mirage_id),
        })),
    }
}

/// Serves on `listener` (a clone of the socket the leader's API takes over later); the
/// server to spawn.
pub fn start(
    listener: std::net::TcpListener,
    mirage_id: &str,
    token: &str,
) -> Result<actix_web::dev::Server, String> {
    let st = web::Data::new(State {
        mirage_id: mirage_id.to_owned(),
        token: token.to_owned(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(st.clone())
            .default_service(web::to(handle))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .map_err(|e| format!("follower api: {e}"))?;
    Ok(server.run())
}
