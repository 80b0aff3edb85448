//! The HTTP service (axum): predictions, model information, health, metrics, feedback.
//!
//! Every request runs against one snapshot of the active model (see [`crate::slot`]).
//! Inference runs on tokio's blocking pool. Bad input is a 4xx with a JSON message; the
//! request size, the time per request and the requests in flight are bounded.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::assurance::Assurance;
use crate::bundle_loader::LoadedModel;
use crate::input::{check_tensor, image_input};
use crate::metrics::Metrics;
use crate::pipeline;
use crate::predictor::Answer;
use crate::slot::ModelSlot;
use crate::validity::{FeedbackError, Monitor, ValidityConfig};

/// Limits of the service.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Most inputs in one batch request.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            timeout: Duration::from_secs(10),
            concurrency: 64,
            max_batch: 256,
        }
    }
}

/// What the handlers share.
pub struct AppState {
    pub slot: Arc<ModelSlot>,
    pub epsilon: f64,
    pub assurance: Option<Assurance>,
    pub metrics: Metrics,
    pub validity: ValidityConfig,
    monitor: ArcSwap<Monitor>,
    next_id: AtomicU64,
    limits: Limits,
    started: Instant,
}

impl AppState {
    pub fn new(
        slot: Arc<ModelSlot>,
        epsilon: f64,
        assurance: Option<Assurance>,
        validity: ValidityConfig,
        limits: Limits,
    ) -> Arc<AppState> {
        let monitor = Monitor::for_model(&slot.current(), validity.clone());
        Arc::new(AppState {
            slot,
            epsilon,
            assurance,
            metrics: Metrics::default(),
            validity,
            monitor: ArcSwap::from_pointee(monitor),
            next_id: AtomicU64::new(1),
            limits,
            started: Instant::now(),
        })
    }

    /// The validity monitor of `model` (a new one after a swap).
    pub fn monitor_for(&self, model: &LoadedModel) -> Arc<Monitor> {
        let m = self.monitor.load_full();
        if m.model_id() == model.model_id() {
            return m;
        }
        let fresh = Arc::new(Monitor::for_model(model, self.validity.clone()));
        self.monitor.store(fresh.clone());
        fresh
    }
}

/// An error answer: status and message, as JSON `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.to_string())
}

fn internal(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.to_string())
}

/// One answer as the API returns it.
#[derive(Debug, Serialize)]
pub struct ApiAnswer {
    pub id: u64,
    #[serde(flatten)]
    pub answer: Answer,
    pub model_id: String,
}

#[derive(Debug, Deserialize)]
struct EpsilonQuery {
    epsilon: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorBody {
    /// One or more images, NHWC raw pixel values, flattened.
    tensor: Vec<f32>,
    epsilon: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// Image files (PNG, JPEG, PPM), base64.
    #[serde(default)]
    images: Vec<String>,
    /// Or raw NHWC pixel values of several images, flattened.
    tensor: Option<Vec<f32>>,
    epsilon: Option<f64>,
}

fn epsilon_of(state: &AppState, q: Option<f64>, body: Option<f64>) -> Result<f64, ApiError> {
    let e = body.or(q).unwrap_or(state.epsilon);
    if !(0.0..=1.0).contains(&e) {
        return Err(bad(format!("epsilon {e} is outside [0, 1]")));
    }
    Ok(e)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Answers the valid inputs of `items` (each one image, or the reason it is invalid);
/// invalid ones keep their error. Updates the assurance output, the metrics and the
/// validity monitor's pending predictions.
async fn answer_items(
    state: Arc<AppState>,
    items: Vec<Result<Vec<f32>, String>>,
    epsilon: f64,
) -> Result<Vec<Result<ApiAnswer, String>>, ApiError> {
    let model = state.slot.current();
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let valid: Vec<f32> = items
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .flatten()
            .copied()
            .collect();
        let (answers, emb) = if valid.is_empty() {
            (vec![], vec![])
        } else {
            pipeline::answer(&model, &valid, epsilon).map_err(internal)?
        };
        let dim = model.engine.embedding_dim();
        let sizes: Vec<usize> = answers.iter().map(|a| a.set.len()).collect();
        if let Some(a) = &st.assurance {
            a.update(sizes.iter().copied());
        }
        let rule = st.assurance.as_ref().map(|a| a.rule()).unwrap_or_default();
        let alerts = sizes.iter().filter(|&&s| rule.raises(s)).count() as u64;
        st.metrics.answers(sizes.iter().copied(), alerts);
        let monitor = st.monitor_for(&model);
        let mut answers = answers.into_iter().zip(emb.chunks_exact(dim.max(1)));
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(match item {
                Err(e) => Err(e),
                Ok(_) => {
                    let (answer, e) = answers
                        .next()
                        .ok_or_else(|| internal("fewer answers than inputs"))?;
                    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
                    monitor.record(id, e, &answer.set, epsilon);
                    Ok(ApiAnswer {
                        id,
                        answer,
                        model_id: model.model_id().to_string(),
                    })
                }
            });
        }
        Ok(out)
    })
    .await
    .map_err(internal)?
}

async fn predict(
    State(state): State<Arc<AppState>>,
    Query(q): Query<EpsilonQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ApiAnswer>, ApiError> {
    let side = state.slot.current().side();
    let (input, body_eps) = if is_json(&headers) {
        let t: TensorBody =
            serde_json::from_slice(&body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
        let n = check_tensor(&t.tensor, side).map_err(bad)?;
        if n != 1 {
            return Err(bad(format!(
                "/v1/predict takes one image, the tensor holds {n}: use /v1/predict/batch"
            )));
        }
        (t.tensor, t.epsilon)
    } else {
        let x = tokio::task::spawn_blocking(move || image_input(&body, "request body", side))
            .await
            .map_err(internal)?
            .map_err(|e| bad(format!("request body: {e}")))?;
        (x, None)
    };
    let epsilon = epsilon_of(&state, q.epsilon, body_eps)?;
    let mut out = answer_items(state, vec![Ok(input)], epsilon).await?;
    match out.pop() {
        Some(Ok(a)) => Ok(Json(a)),
        Some(Err(e)) => Err(bad(e)),
        None => Err(internal("no answer")),
    }
}

async fn predict_batch(
    State(state): State<Arc<AppState>>,
    Query(q): Query<EpsilonQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let side = state.slot.current().side();
    let b: BatchBody =
        serde_json::from_slice(&body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
    let epsilon = epsilon_of(&state, q.epsilon, b.epsilon)?;
    let per = side * side * 3;
    let items: Vec<Result<Vec<f32>, String>> = match (b.tensor, b.images.is_empty()) {
        (Some(_), false) => return Err(bad("give either \"images\" or \"tensor\", not both")),
        (Some(t), true) => {
            check_tensor(&t, side).map_err(bad)?;
            t.chunks(per).map(|c| Ok(c.to_vec())).collect()
        }
        (None, false) => {
            let images = b.images;
            tokio::task::spawn_blocking(move || {
                images
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let name = format!("images[{i}]");
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(s)
                            .map_err(|e| format!("{name}: bad base64: {e}"))?;
                        image_input(&bytes, &name, side).map_err(|e| format!("{name}: {e}"))
                    })
                    .collect()
            })
            .await
            .map_err(internal)?
        }
        (None, true) => return Err(bad("no input: give \"images\" (base64) or \"tensor\"")),
    };
    if items.len() > state.limits.max_batch {
        return Err(bad(format!(
            "{} inputs in one batch, the limit is {}",
            items.len(),
            state.limits.max_batch
        )));
    }
    let out = answer_items(state.clone(), items, epsilon).await?;
    let failed = out.iter().filter(|r| r.is_err()).count();
    let results: Vec<serde_json::Value> = out
        .into_iter()
        .map(|r| match r {
            Ok(a) => serde_json::to_value(a).unwrap_or_else(|e| json!({ "error": e.to_string() })),
            Err(e) => json!({ "error": e }),
        })
        .collect();
    // every input refused: the request as a whole is bad
    let status = if failed > 0 && failed == results.len() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "model_id": state.slot.current().model_id(), "failed": failed, "results": results })),
    )
        .into_response())
}

async fn model_info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let m = state.slot.current();
    let man = &m.bundle.manifest;
    let validity = state.monitor_for(&m).snapshot();
    Json(json!({
        "model_id": man.model_id,
        "run_id": man.run_id,
        "manifest_sha256": m.bundle.manifest_sha256,
        "runtime": m.engine.runtime().name(),
        "model_file": m.engine.file(),
        "input": man.input,
        "output": man.output,
        "class_names": man.class_names,
        "icp": {
            "ncm": m.ncm,
            "mondrian": man.icp.mondrian,
            "p_values": man.icp.p_values,
            "n_calibration": man.icp.n_calibration,
            "bundle_epsilon": man.icp.epsilon,
            "epsilon": state.epsilon,
        },
        "self_test": m.self_test,
        "load_ms": m.load_ms,
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "validity": validity,
    }))
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "model_id": state.slot.current().model_id() }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    state.metrics.render(&mut out);
    let m = state.slot.current();
    let v = state.monitor_for(&m).snapshot();
    let id = &v.model_id;
    let gauges: [(&str, &str, f64); 9] = [
        (
            "feedback_total",
            "Labelled predictions (feedback) received.",
            v.feedback as f64,
        ),
        (
            "feedback_errors_total",
            "Labelled predictions whose set missed the true label.",
            v.errors as f64,
        ),
        (
            "error_rate",
            "Empirical error rate of the labelled predictions.",
            v.error_rate,
        ),
        (
            "error_rate_ci_low",
            "Lower end of the exact (Clopper-Pearson) interval of the error rate.",
            v.error_rate_ci_low,
        ),
        (
            "error_rate_ci_high",
            "Upper end of the exact (Clopper-Pearson) interval of the error rate.",
            v.error_rate_ci_high,
        ),
        (
            "epsilon",
            "Mean significance level of the labelled predictions.",
            v.mean_epsilon,
        ),
        (
            "martingale",
            "Conformal test martingale over the true-label p-values.",
            v.martingale,
        ),
        (
            "drift_alarm",
            "1 when the martingale crossed 1/delta (Ville).",
            f64::from(u8::from(v.alarm)),
        ),
        (
            "validity_violation",
            "1 when the error-rate interval lies above epsilon.",
            f64::from(u8::from(v.violation)),
        ),
    ];
    for (name, help, value) in gauges {
        out.push_str(&format!(
            "# HELP edge_agent_validity_{name} {help}\n# TYPE edge_agent_validity_{name} gauge\nedge_agent_validity_{name}{{model_id=\"{id}\"}} {value}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP edge_agent_model_info The active model.\n# TYPE edge_agent_model_info gauge\nedge_agent_model_info{{model_id=\"{}\",runtime=\"{}\"}} 1\n",
        m.model_id(),
        m.engine.runtime().name()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackItem {
    id: u64,
    label: u16,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FeedbackBody {
    One(FeedbackItem),
    Many { feedback: Vec<FeedbackItem> },
}

async fn feedback(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: FeedbackBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "bad JSON body ({{\"id\": N, \"label\": L}} or {{\"feedback\": [...]}}): {e}"
        ))
    })?;
    let items = match body {
        FeedbackBody::One(i) => vec![i],
        FeedbackBody::Many { feedback } => feedback,
    };
    let model = state.slot.current();
    let monitor = state.monitor_for(&model);
    let mut errors = vec![];
    for it in &items {
        if let Err(e) = monitor.feedback(it.id, it.label, &model) {
            errors.push(e);
        }
    }
    let snap = monitor.snapshot();
    if errors.len() == items.len() {
        if let Some(e) = errors.first() {
            let status = match e {
                FeedbackError::UnknownId(_) => StatusCode::NOT_FOUND,
                FeedbackError::OtherModel { .. } => StatusCode::CONFLICT,
                FeedbackError::Label { .. } => StatusCode::BAD_REQUEST,
                FeedbackError::Score(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return Err(ApiError(status, e.to_string()));
        }
    }
    Ok(Json(json!({
        "accepted": items.len() - errors.len(),
        "errors": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        "validity": snap,
    })))
}

async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let t0 = Instant::now();
    let res = next.run(req).await;
    state
        .metrics
        .request(&route, res.status().as_u16(), t0.elapsed().as_secs_f64());
    res
}

/// The service's routes with its limits.
pub fn router(state: Arc<AppState>) -> Router {
    let limits = state.limits.clone();
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/v1/predict/batch", post(predict_batch))
        .route("/v1/model", get(model_info))
        .route("/v1/feedback", post(feedback))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.concurrency,
        ))
        .with_state(state)
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
