//! The HTTP API (actix-web, JSON): intents, ghosts, services, locks, reports (+ Server-Sent
//! Events), actors, Prometheus metrics, health. Loopback by default; a bearer token is
//! required when configured (and configuration requires one off loopback).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actorkit::metrics::MeteredAddr;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::actors::report_stream::{self, Filter, ReportHub, Subscribe, Subscriber};
use crate::actors::supervisor::operator::{
    BreakLock, OperatorError, SetDrain, Submit, WaitFinished, Withdraw,
};
use crate::actors::supervisor::queries::{
    GetGhost, GetIntent, GetOverview, ListGhosts, ListIntents, ListLocks, Overview, QueryReports,
};
use crate::actors::supervisor::{IntentSummary, Supervisor};
use crate::intent;

#[derive(Clone)]
pub struct AppState {
    pub sup: MeteredAddr<Supervisor>,
    pub hub: MeteredAddr<ReportHub>,
    pub token: Arc<String>,
    /// Admin address of the co-located Ghost (`mirage up`), empty when there is none.
    pub local_admin: Arc<String>,
}

fn err(status: u16, msg: impl Into<String>) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(code).json(json!({"error": msg.into(), "status": status}))
}

/// An error answer's body: `{"status", "error", "field"?}`.
#[derive(Debug, Serialize)]
struct ApiError {
    status: u16,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

/// The HTTP status of each refusal: the one place the Supervisor's domain errors become HTTP.
fn status_of(e: &OperatorError) -> u16 {
    use OperatorError as E;
    match e {
        E::Refused { .. } => 400,
        E::NoIntent(_) | E::NoLock(_) => 404,
        E::Exists(_) | E::Standing(_) | E::Finished(_) => 409,
        E::TooManyActive { .. } | E::TooManyWaiters(_) | E::TooManyDrained => 429,
        E::PlanUnavailable(_) | E::Vanished | E::DrainNotSaved(_) => 500,
        E::NotPersisted(_) | E::NotRecorded(_) => 503,
    }
}

fn api_error(e: &OperatorError) -> ApiError {
    ApiError {
        status: status_of(e),
        error: e.to_string(),
        // Which step of the submitted intent cannot run.
        field: match e {
            OperatorError::Refused { step, .. } => Some(format!("step[{step}]")),
            _ => None,
        },
    }
}

fn api_err(e: OperatorError) -> HttpResponse {
    let body = api_error(&e);
    let code = StatusCode::from_u16(body.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(code).json(body)
}

fn unavailable(e: impl std::fmt::Display) -> HttpResponse {
    err(503, format!("mirage is not answering: {e}"))
}

async fn auth(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let token = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.token.clone())
        .unwrap_or_default();
    // The health check and the dashboard page itself are public; the page asks with the token.
    let public = matches!(req.path(), "/healthz" | "/" | "/dashboard");
    if !token.is_empty() && !public {
        let header = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(bearer)
            .map(str::to_owned);
        // EventSource cannot send headers: `?token=` is accepted for the report stream only.
        let query = (req.path() == "/v1/reports/stream")
            .then(|| query_token(req.query_string()))
            .flatten();
        let ok = header.or(query).is_some_and(|t| constant_eq(&t, &token));
        if !ok {
            let resp = err(
                401,
                "missing or wrong bearer token (Authorization: Bearer …)",
            );
            return Ok(req.into_response(resp));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// The credentials of an `Authorization: Bearer …` header; the scheme is case-insensitive
/// (RFC 7235 §2.1).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once([' ', '\t'])?;
    let t = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !t.is_empty()).then_some(t)
}

/// `token` from a query string, percent-decoded (the dashboard sends it through
/// `encodeURIComponent`).
pub fn query_token(qs: &str) -> Option<String> {
    web::Query::<std::collections::HashMap<String, String>>::from_query(qs)
        .ok()?
        .into_inner()
        .remove("token")
}

/// Compares SHA-256 digests in constant time: a wrong guess takes as long whatever its
/// length or content.
pub fn constant_eq(a: &str, b: &str) -> bool {
    let (x, y) = (
        openssl::sha::sha256(a.as_bytes()),
        openssl::sha::sha256(b.as_bytes()),
    );
    openssl::memcmp::eq(&x, &y)
}

const DASHBOARD: &str = include_str!("../assets/dashboard.html");

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        // The page may be opened with `?token=`: no Referer carries it anywhere.
        .insert_header(("referrer-policy", "no-referrer"))
        .body(DASHBOARD)
}

async fn healthz() -> HttpResponse {
    // now_ms: `ghost doctor --mirage-api` measures clock skew against it.
    HttpResponse::Ok().json(json!({"ok": true, "now_ms": shared::now_ms()}))
}

#[derive(Deserialize)]
struct SubmitQuery {
    /// Seconds to hold the answer until the intent has finished (at most 300).
    wait: Option<f64>,
}

async fn submit(
    st: web::Data<AppState>,
    q: web::Query<SubmitQuery>,
    body: web::Bytes,
) -> HttpResponse {
    let Ok(text) = std::str::from_utf8(&body) else {
        return err(400, "body is not UTF-8");
    };
    let parsed = intent::parse(text, || uuid::Uuid::now_v7().to_string());
    let intent = match parsed {
        Ok(i) => i,
        Err(e) => {
            return HttpResponse::BadRequest()
                .json(json!({"error": e.to_string(), "field": e.field, "status": 400}))
        }
    };
    let id = intent.intent_id.clone();
    // Per-hop timestamps of one intent (BENCHMARKS.md, issue 20): off unless `hop=debug`.
    tracing::debug!(target: "hop", hop = "http.accept", intent_id = %id);
    let summary = match st.sup.send(Submit(intent)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return api_err(e),
        Err(e) => return unavailable(e),
    };
    let Some(wait) = q.wait.filter(|w| *w > 0.0) else {
        return HttpResponse::Created().json(summary);
    };
    if !wait.is_finite() || wait > 300.0 {
        // The intent is accepted either way; say so rather than failing the submission.
        return accepted(
            &summary,
            "not waited: wait must be between 0 and 300 seconds",
        );
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let registered = st.sup.send(WaitFinished { intent_id: id, tx }).await;
    if let Ok(Err(e)) = registered {
        return accepted(&summary, &e.to_string());
    }
    match tokio::time::timeout(Duration::from_secs_f64(wait), rx).await {
        Ok(Ok(done)) => {
            tracing::debug!(target: "hop", hop = "http.answer", intent_id = %done.intent_id);
            HttpResponse::Created().json(done)
        }
        _ => accepted(&summary, &format!("still running after {wait} s")),
    }
}

/// 202: the intent is in, but its end was not waited for; `wait` says why.
fn accepted(summary: &IntentSummary, why: &str) -> HttpResponse {
    let mut v = serde_json::to_value(summary).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("wait".into(), json!(why));
    }
    HttpResponse::Accepted().json(v)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn list_intents(st: web::Data<AppState>, q: web::Query<Limit>) -> HttpResponse {
    let limit = q.limit.unwrap_or(100).min(10_000);
    match st.sup.send(ListIntents { limit }).await {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => unavailable(e),
    }
}

async fn get_intent(st: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    match st.sup.send(GetIntent(id.into_inner())).await {
        Ok(Ok(mut d)) => {
            // A storage.move's one-time token stays in Mirage (issue 14).
            crate::plan::redact_move_token(&mut d.plan);
            HttpResponse::Ok().json(d)
        }
        Ok(Err(e)) => api_err(e),
        Err(e) => unavailable(e),
    }
}

async fn withdraw(st: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let id = id.into_inner();
    match st.sup.send(Withdraw(id.clone())).await {
        Ok(Ok(status)) => HttpResponse::Accepted().json(json!({"intent_id": id, "status": status})),
        Ok(Err(e)) => api_err(e),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
struct GhostQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// Largest page of `GET /v1/ghosts`; also the page size when `limit` is not given.
pub const GHOSTS_PAGE_MAX: usize = 1000;

/// `GET /v1/ghosts[?limit=N][&after=GHOST_ID]`: a JSON array in ghost_id order, as before,
/// one page of at most `GHOSTS_PAGE_MAX`. `X-Next-Cursor` carries the `after` for the next
/// page (absent on the last one) and `X-Total-Count` the registry size.
async fn ghosts(st: web::Data<AppState>, q: web::Query<GhostQuery>) -> HttpResponse {
    let q = q.into_inner();
    let m = ListGhosts {
        after: q.after.filter(|a| !a.is_empty()),
        limit: q.limit.unwrap_or(GHOSTS_PAGE_MAX).clamp(1, GHOSTS_PAGE_MAX),
    };
    match st.sup.send(m).await {
        Ok(p) => {
            let mut r = HttpResponse::Ok();
            r.insert_header(("X-Total-Count", p.total.to_string()));
            if let Some(n) = &p.next {
                r.insert_header(("X-Next-Cursor", n.as_str()));
            }
            r.json(p.ghosts)
        }
        Err(e) => unavailable(e),
    }
}

async fn ghost(st: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    match st.sup.send(GetGhost(id.clone())).await {
        Ok(Some(g)) => HttpResponse::Ok().json(g),
        Ok(None) => err(404, format!("no ghost {id}")),
        Err(e) => unavailable(e),
    }
}

/// `POST|DELETE /v1/ghosts/{id}/drain`: drain or undrain a Ghost (a Ghost not known yet may
/// be drained ahead of its first session; `known` says which).
async fn drain(req: HttpRequest, st: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let id = id.into_inner();
    let drained = req.method() == actix_web::http::Method::POST;
    let m = SetDrain {
        ghost: id.clone(),
        drained,
    };
    match st.sup.send(m).await {
        Ok(Ok(known)) => {
            HttpResponse::Ok().json(json!({"ghost_id": id, "drained": drained, "known": known}))
        }
        Ok(Err(e)) => api_err(e),
        Err(e) => unavailable(e),
    }
}

async fn services(st: web::Data<AppState>) -> HttpResponse {
    match st.sup.send(ListGhosts::all()).await {
        Ok(p) => {
            let v = p.ghosts;
            let mut map: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
            for g in v {
                for s in &g.seeds {
                    let observed: BTreeMap<&String, &crate::observe::Observed> =
                        crate::observe::of_seed(&g.observed, &s.id).collect();
                    let uris: Vec<String> = observed
                        .values()
                        .flat_map(|o| crate::observe::uris(o))
                        .collect();
                    map.entry(s.id.clone()).or_default().push(json!({
                        "ghost_id": g.ghost_id, "connected": g.connected, "local": g.local,
                        "uri": format!("{}://{}", s.id.trim_start_matches("seed."), g.ghost_id),
                        "uris": uris,
                        "observed": observed,
                        "operations": s.operations.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
                    }));
                }
            }
            HttpResponse::Ok().json(map)
        }
        Err(e) => unavailable(e),
    }
}

async fn locks(st: web::Data<AppState>) -> HttpResponse {
    match st.sup.send(ListLocks).await {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => unavailable(e),
    }
}

async fn break_lock(st: web::Data<AppState>, key: web::Path<String>) -> HttpResponse {
    let key = key.into_inner();
    match st.sup.send(BreakLock(key.clone())).await {
        Ok(Ok(())) => HttpResponse::Accepted().json(json!({"key": key, "status": "broken"})),
        Ok(Err(e)) => api_err(e),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
struct ReportQuery {
    intent: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
}

async fn reports(st: web::Data<AppState>, q: web::Query<ReportQuery>) -> HttpResponse {
    let m = QueryReports {
        intent: q.intent.clone(),
        after: q.after.unwrap_or(0),
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    match st.sup.send(m).await {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => unavailable(e),
    }
}

/// Server-Sent Events. Resumable: `Last-Event-ID` (or `?after=`) replays what is still in the
/// history. Each subscriber is a `ReportStream` actor with a bounded queue: a consumer too
/// slow for it gets a `gap` event saying how many reports (and which seqs) it missed, never
/// unbounded buffering.
async fn stream(
    st: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<ReportQuery>,
) -> HttpResponse {
    let after = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.after)
        .unwrap_or(u64::MAX);
    let intent = q.intent.clone();
    let subscriber = Subscriber {
        peer: req.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        client: req
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(120)
            .collect(),
        filter: Filter {
            intent: intent.clone(),
        },
    };
    // Subscribe before reading history so nothing falls in between.
    let (tx, rx) = tokio::sync::mpsc::channel(report_stream::STREAM_QUEUE);
    match st.hub.send(Subscribe { subscriber, tx }).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return err(503, e),
        Err(e) => return unavailable(e),
    }
    let backlog = if after == u64::MAX {
        Vec::new()
    } else {
        st.sup
            .send(QueryReports {
                intent,
                after,
                limit: 10_000,
            })
            .await
            .unwrap_or_default()
    };
    let last = backlog
        .last()
        .map(|r| r.seq)
        .unwrap_or(if after == u64::MAX { 0 } else { after });
    let head = futures::stream::iter(
        std::iter::once(web::Bytes::from_static(b": mirage report stream\n\n"))
            .chain(backlog.iter().map(report_stream::sse))
            .map(Ok::<_, actix_web::Error>)
            .collect::<Vec<_>>(),
    );
    // Dropping `rx` (the client went) stops the stream actor.
    let live = futures::stream::unfold((rx, last), |(mut rx, last)| async move {
        loop {
            let c = rx.recv().await?;
            match c.seq {
                Some(s) if s <= last => continue,
                Some(s) => return Some((Ok(c.bytes), (rx, s))),
                None => return Some((Ok::<_, actix_web::Error>(c.bytes), (rx, last))),
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(head.chain(live))
}

#[derive(Deserialize)]
struct SpawnReq {
    target_name: String,
    admin_addr: String,
}

/// The spawn boundary: asks the co-located Ghost to start another Ghost process.
async fn spawn_ghost(st: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    if st.local_admin.is_empty() {
        return err(409, "no local ghost (start Mirage with `mirage up`)");
    }
    let req: SpawnReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return err(
                400,
                format!("body must be {{\"target_name\",\"admin_addr\"}}: {e}"),
            )
        }
    };
    let call = json!({"action": "spawn_ghost", "spawn": {"target_name": req.target_name, "admin_addr": req.admin_addr}});
    match crate::admin_client::call(&st.local_admin, &call, Duration::from_secs(10)).await {
        Ok(v) if v["ok"] == true => HttpResponse::Created().json(&v["data"]),
        Ok(v) => err(
            400,
            v["error"].as_str().unwrap_or("spawn refused").to_owned(),
        ),
        Err(e) => err(502, e),
    }
}

/// One entry per actor kind (with per-message figures), then one per live report stream
/// (with its subscriber).
async fn actors() -> HttpResponse {
    let mut v: Vec<serde_json::Value> = actorkit::metrics::snapshot_all()
        .into_iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect();
    v.extend(report_stream::snapshot_streams());
    HttpResponse::Ok().json(v)
}

async fn overview(st: web::Data<AppState>) -> HttpResponse {
    match st.sup.send(GetOverview).await {
        // With the etcd store: this Mirage's role and leader next to the overview.
        Ok(o) => match (crate::ha::status::HA.get(), serde_json::to_value(&o)) {
            (Some(ha), Ok(mut v)) => {
                v["role"] = json!(ha.role);
                v["leader"] = json!(ha.leader);
                v["ha"] = json!(ha);
                HttpResponse::Ok().json(v)
            }
            _ => HttpResponse::Ok().json(o),
        },
        Err(e) => unavailable(e),
    }
}

async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    let o = st.sup.send(GetOverview).await.ok();
    let mut out = String::with_capacity(8192);
    let g = |f: fn(&Overview) -> usize| o.as_ref().map(f).unwrap_or(0) as u64;
    let disk = &crate::store::DISK;
    crate::metrics::render(
        &mut out,
        &[
            (
                "mirage_store_disk_full",
                "1 while store writes fail on a full disk (until 10 s after the last failure)",
                disk.full() as u64,
            ),
            (
                "mirage_store_reserve_released",
                "1 while the store's disk reserve is given back (not made again yet)",
                disk.reserve_released() as u64,
            ),
            (
                "mirage_ha_leader",
                "1 while this Mirage leads (store backend etcd), else 0",
                crate::ha::status::HA.leading() as u64,
            ),
            (
                "mirage_ghosts_connected",
                "Ghosts with a live session",
                g(|o| o.ghosts_connected),
            ),
            (
                "mirage_ghosts_disconnected",
                "Disconnected Ghosts still remembered (limits.disconnected_ghosts)",
                g(|o| o.ghosts_disconnected),
            ),
            (
                "mirage_intents_active",
                "Intents running now",
                g(|o| o.intents_active),
            ),
            (
                "mirage_reports_kept",
                "Reports in the bounded history",
                g(|o| o.reports_kept),
            ),
            (
                "mirage_event_window",
                "Event ids in the dedupe window",
                g(|o| o.event_window),
            ),
            (
                "mirage_routes",
                "Commands awaiting their event",
                g(|o| o.routes),
            ),
        ],
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    err(404, format!("no route {} {}", req.method(), req.path()))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(dashboard))
        .route("/dashboard", web::get().to(dashboard))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics))
        .service(
            web::scope("/v1")
                .route("/intents", web::post().to(submit))
                .route("/intents", web::get().to(list_intents))
                .route("/intents/{id}", web::get().to(get_intent))
                .route("/intents/{id}", web::delete().to(withdraw))
                .route("/ghosts", web::get().to(ghosts))
                .route("/ghosts/spawn", web::post().to(spawn_ghost))
                .route("/ghosts/{id}", web::get().to(ghost))
                .route("/ghosts/{id}/drain", web::post().to(drain))
                .route("/ghosts/{id}/drain", web::delete().to(drain))
                .route("/services", web::get().to(services))
                .route("/locks", web::get().to(locks))
                .route("/locks/{key}", web::delete().to(break_lock))
                .route("/reports", web::get().to(reports))
                .route("/reports/stream", web::get().to(stream))
                .route("/actors", web::get().to(actors))
                .route("/overview", web::get().to(overview)),
        );
}

/// Starts the API server on an already bound listener (plain HTTP): a Mirage that becomes
/// the etcd leader takes over the socket its follower API answered on, so clients never
/// find the port closed in between.
pub fn start_on(
    listener: std::net::TcpListener,
    max_body: usize,
    state: AppState,
) -> Result<(std::net::SocketAddr, actix_web::dev::Server), String> {
    start_bound(Bind::Listener(listener), max_body, None, state)
}

/// Starts the API server in this System; returns the bound address.
pub fn start(
    listen: &str,
    max_body: usize,
    tls: Option<(&str, &str)>,
    state: AppState,
) -> Result<(std::net::SocketAddr, actix_web::dev::Server), String> {
    start_bound(Bind::Addr(listen), max_body, tls, state)
}

enum Bind<'a> {
    Addr(&'a str),
    Listener(std::net::TcpListener),
}

fn start_bound(
    bind: Bind<'_>,
    max_body: usize,
    tls: Option<(&str, &str)>,
    state: AppState,
) -> Result<(std::net::SocketAddr, actix_web::dev::Server), String> {
    let listen = match &bind {
        Bind::Addr(a) => a.to_string(),
        Bind::Listener(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
    };
    let listen = listen.as_str();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                actix_web::error::InternalError::from_response(
                    e.to_string(),
                    err(400, format!("bad query: {e}")),
                )
                .into()
            }))
            .wrap(from_fn(auth))
            .configure(configure)
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2);
    let server = match (tls, bind) {
        (_, Bind::Listener(l)) => server.listen(l),
        (None, Bind::Addr(_)) => server.bind(listen),
        (Some((cert, key)), Bind::Addr(_)) => {
            let e = |what: &str, x: openssl::error::ErrorStack| format!("api tls: {what}: {x}");
            let mut b =
                openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls())
                    .map_err(|x| e("acceptor", x))?;
            b.set_private_key_file(key, openssl::ssl::SslFiletype::PEM)
                .map_err(|x| e(key, x))?;
            b.set_certificate_chain_file(cert).map_err(|x| e(cert, x))?;
            b.check_private_key()
                .map_err(|x| e("key does not match the certificate", x))?;
            server.bind_openssl(listen, b)
        }
    }
    .map_err(|e| format!("api listen {listen}: {e}"))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| format!("api listen {listen}: no address"))?;
    Ok((addr, server.run()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::protocol::PlanError;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn query_token_is_percent_decoded() {
        assert_eq!(
            query_token("after=3&token=a%2Bb%20c%26d%3D%25").as_deref(),
            Some("a+b c&d=%")
        );
        assert_eq!(query_token("after=3"), None);
    }

    #[test]
    fn refusals_map_to_the_statuses_and_texts_users_see() {
        let cases = [
            (
                OperatorError::Exists("i1".into()),
                409,
                "intent i1 already exists; submit it under a new intent_id",
            ),
            (
                OperatorError::TooManyActive {
                    active: 3,
                    limit: 3,
                },
                429,
                "3 intents are active (limit 3); try again later",
            ),
            (
                OperatorError::NotPersisted(PlanError::Store("disk full".into())),
                503,
                "intent not persisted: disk full",
            ),
            (
                OperatorError::NotRecorded(PlanError::StoreGone),
                503,
                "store gone",
            ),
            (
                OperatorError::PlanUnavailable("Mailbox has closed".into()),
                500,
                "Mailbox has closed",
            ),
            (OperatorError::Vanished, 500, "intent vanished"),
            (
                OperatorError::Standing("i1".into()),
                409,
                "intent i1 is standing; it finishes only when withdrawn",
            ),
            (OperatorError::NoIntent("i1".into()), 404, "no intent i1"),
            (
                OperatorError::Finished("i1".into()),
                409,
                "intent i1 has already finished",
            ),
            (
                OperatorError::TooManyWaiters(7),
                429,
                "7 callers are already waiting for intents; poll instead",
            ),
            (
                OperatorError::NoLock("g1::seed.kv".into()),
                404,
                "no lock g1::seed.kv",
            ),
            (
                OperatorError::TooManyDrained,
                429,
                "too many drained Ghosts",
            ),
            (
                OperatorError::DrainNotSaved("read-only".into()),
                500,
                "read-only",
            ),
        ];
        for (e, status, text) in cases {
            let body = api_error(&e);
            assert_eq!(
                (body.status, body.error.as_str(), body.field),
                (status, text, None)
            );
        }
        let refused = api_error(&OperatorError::Refused {
            id: "i1".into(),
            step: 2,
            why: "no Ghost hosts seed.kv".into(),
        });
        assert_eq!(refused.status, 400);
        assert_eq!(refused.error, "intent i1 refused: no Ghost hosts seed.kv");
        assert_eq!(refused.field.as_deref(), Some("step[2]"));
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(json["field"], "step[2]");
        let plain = serde_json::to_value(api_error(&OperatorError::Vanished)).unwrap();
        assert!(plain.get("field").is_none(), "{plain}");
    }

    #[test]
    fn token_compare_is_exact() {
        assert!(constant_eq("t0k", "t0k"));
        assert!(!constant_eq("t0k", "t0"));
        assert!(!constant_eq("", "t0k"));
    }
}
