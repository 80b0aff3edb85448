//! The HTTP service (axum on hyper's HTTP/1 server): predictions, model information,
//! health, metrics, feedback.
//!
//! Every request runs against one snapshot of the active model (see [`crate::model::slot`]).
//! Bad input is a 4xx with a JSON message. What bounds the service:
//!
//! - per connection: the time to send a request's headers (`header_read_timeout`, also the
//!   idle keep-alive time) and, per request, the time to send its body
//!   (`body_read_timeout`) and its size (`max_body_bytes`, 413);
//! - per request: the time from headers to answer (`timeout`, 408). The worker pool
//!   (`concurrency`) sits inside that timeout and is taken only after the body has arrived,
//!   so slow senders hold no worker; `/healthz`, `/metrics` and `/v1/model` never wait for
//!   the pool;
//! - per image: its sides and the bytes its decode allocates, read from its header before
//!   decoding (`max_image_side`, `max_decoded_bytes`, 413);
//! - all requests together: two memory budgets. The request budget (bodies as their bytes
//!   arrive, parsed JSON, batch pixels) is never waited for: a request that does not fit
//!   gets 503 with `Retry-After`. The decode budget (every decode's allocation, from its
//!   header) is waited for in turn, within the request's timeout; its permits travel with
//!   the blocking work and are released only when that work has ended.
//!
//! Work on the blocking pool stops at its next step (decode, resize, inference) once its
//! request is gone (timeout, client left): a drop guard sets a flag the steps check.
//! Every status, 408 included, is counted in `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::image::DecodeLimits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::model::loader::LoadedModel;
use crate::model::pipeline;
use crate::model::predictor::Answer;
use crate::model::slot::ModelSlot;
use crate::monitoring::assurance::Assurance;
use crate::monitoring::health::Tap;
use crate::monitoring::validity::{FeedbackError, Monitor, PredictionId, ValidityConfig};
use crate::rollout::driver::RolloutView;
use crate::serving::input::{check_tensor, image_input_limited, InputError};
use crate::serving::metrics::Metrics;

/// Limits of the service.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// From the request's headers to its answer (408 beyond).
    pub timeout: Duration,
    /// Requests worked on at once (prediction, feedback and reset routes; more wait).
    pub concurrency: usize,
    /// Most inputs in one batch request.
    pub max_batch: usize,
    /// Widest or tallest image decoded, in pixels.
    pub max_image_side: u32,
    /// Most bytes decoding one image may allocate ([`shared::image::Probe::decode_bytes`]).
    pub max_decoded_bytes: u64,
    /// Bytes all requests may hold at once for bodies, parsed JSON and batch pixels.
    pub request_budget_bytes: usize,
    /// Bytes all image decodes in flight may allocate at once.
    pub decode_budget_bytes: u64,
    /// Time a connection has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time a request has to send its body.
    pub body_read_timeout: Duration,
}

impl Default for Limits {
    /// Sized for a device: with every budget full the agent holds about 200 MB (the 192
    /// MiB of budgets plus a model of about 20 MB), at any concurrency. A 12-megapixel
    /// photo (36 MB as RGB) decodes; a 13000 x 13000 PNG bomb is refused from its header.
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            timeout: Duration::from_secs(10),
            concurrency: 64,
            max_batch: 256,
            max_image_side: 8192,
            max_decoded_bytes: 64 << 20,
            request_budget_bytes: 64 << 20,
            decode_budget_bytes: 128 << 20,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
        }
    }
}

/// Limits that cannot work together.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LimitsError {
    #[error("{0} must be positive")]
    Zero(&'static str),
    #[error(
        "max_decoded_bytes ({decoded}) is above decode_budget_bytes ({budget}): an image at the limit could never be decoded"
    )]
    DecodeBudget { decoded: u64, budget: u64 },
    #[error(
        "max_body_bytes ({body}) is above request_budget_bytes ({budget}): a body at the limit could never be received"
    )]
    RequestBudget { body: usize, budget: usize },
}

impl Limits {
    /// Checks that the limits can work together.
    pub fn check(&self) -> Result<(), LimitsError> {
        let zero = [
            ("max_body_bytes", self.max_body_bytes == 0),
            ("timeout", self.timeout.is_zero()),
            ("concurrency", self.concurrency == 0),
            ("max_batch", self.max_batch == 0),
            ("max_image_side", self.max_image_side == 0),
            ("max_decoded_bytes", self.max_decoded_bytes == 0),
            ("header_read_timeout", self.header_read_timeout.is_zero()),
            ("body_read_timeout", self.body_read_timeout.is_zero()),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(LimitsError::Zero(name));
        }
        if self.max_decoded_bytes > self.decode_budget_bytes {
            return Err(LimitsError::DecodeBudget {
                decoded: self.max_decoded_bytes,
                budget: self.decode_budget_bytes,
            });
        }
        if self.max_body_bytes > self.request_budget_bytes {
            return Err(LimitsError::RequestBudget {
                body: self.max_body_bytes,
                budget: self.request_budget_bytes,
            });
        }
        Ok(())
    }

    /// What one decode may take.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_width: self.max_image_side,
            max_height: self.max_image_side,
            max_bytes: self.max_decoded_bytes,
        }
    }
}

/// Who may call what: bearer tokens for `/v1/feedback` (none: anyone holding a prediction
/// id may label it) and `/v1/validity/reset` (none: reset disabled).
#[derive(Clone, Default)]
pub struct Access {
    pub feedback_token: Option<String>,
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field(
                "feedback_token",
                &self.feedback_token.as_ref().map(|_| "***"),
            )
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Bytes in flight, as semaphore permits of 1 KiB.
struct Budget {
    sem: Arc<Semaphore>,
    kib: usize,
}

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

impl Budget {
    fn new(bytes: u64) -> Budget {
        let kib = usize::try_from(kib(bytes))
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Budget {
            sem: Arc::new(Semaphore::new(kib)),
            kib,
        }
    }

    fn total_bytes(&self) -> u64 {
        self.kib as u64 * 1024
    }

    fn in_use_bytes(&self) -> u64 {
        self.kib.saturating_sub(self.sem.available_permits()) as u64 * 1024
    }

    /// Whether `bytes` can ever be granted.
    fn fits(&self, bytes: u64) -> bool {
        kib(bytes) <= self.kib as u64
    }

    /// `bytes` now, or `None` if the budget does not have them at the moment.
    fn try_take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(kib(bytes)).ok()?;
        self.sem.clone().try_acquire_many_owned(n).ok()
    }

    /// `bytes`, waiting in turn (FIFO); `None` if they can never be granted.
    async fn take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        if !self.fits(bytes) {
            return None;
        }
        let n = u32::try_from(kib(bytes)).ok()?;
        self.sem.clone().acquire_many_owned(n).await.ok()
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
    limits: Limits,
    access: Access,
    /// The worker pool: `concurrency` permits.
    pool: Arc<Semaphore>,
    request_budget: Budget,
    decode_budget: Budget,
    started: Instant,
    /// What the answers look like, per model: for a rollout's health gate ...
    pub health: Arc<Tap>,
    /// ... and for the device's telemetry (each report takes its window).
    pub telemetry: Arc<Tap>,
    /// The rollout state machine's view (`edge-agent run` only): `GET /v1/rollout`.
    pub rollout: OnceLock<Arc<RolloutView>>,
}

impl AppState {
    pub fn new(
        slot: Arc<ModelSlot>,
        epsilon: f64,
        assurance: Option<Assurance>,
        validity: ValidityConfig,
        limits: Limits,
        access: Access,
    ) -> Arc<AppState> {
        let monitor = Monitor::for_model(&slot.current(), validity.clone());
        Arc::new(AppState {
            slot,
            epsilon,
            assurance,
            metrics: Metrics::default(),
            validity,
            monitor: ArcSwap::from_pointee(monitor),
            pool: Arc::new(Semaphore::new(
                limits.concurrency.clamp(1, Semaphore::MAX_PERMITS),
            )),
            request_budget: Budget::new(limits.request_budget_bytes as u64),
            decode_budget: Budget::new(limits.decode_budget_bytes),
            limits,
            access,
            started: Instant::now(),
            health: Arc::default(),
            telemetry: Arc::default(),
            rollout: OnceLock::new(),
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
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        match self.0 {
            StatusCode::SERVICE_UNAVAILABLE => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UNAUTHORIZED => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        r
    }
}

fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.to_string())
}

fn internal(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.to_string())
}

fn busy(what: &str) -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the memory budget for {what} is in use by other requests: retry later"),
    )
}

fn too_large(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::PAYLOAD_TOO_LARGE, msg.to_string())
}

/// The status an input error answers with.
fn input_status(e: &InputError) -> StatusCode {
    match e {
        InputError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        InputError::Cancelled => StatusCode::REQUEST_TIMEOUT,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// One answer as the API returns it.
#[derive(Debug, Serialize)]
pub struct ApiAnswer {
    /// Unguessable (128 random bits): the handle for `/v1/feedback`.
    pub id: PredictionId,
    #[serde(flatten)]
    pub answer: Answer,
    pub model_id: String,
    /// The model's embedding of the input, with `?embedding=true` (to compare builds and
    /// engines, or to keep for analysis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
struct EpsilonQuery {
    epsilon: Option<f64>,
    #[serde(default)]
    embedding: bool,
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

/// A request body, and its bytes' share of the request budget.
struct ReadBody {
    bytes: Bytes,
    permit: OwnedSemaphorePermit,
}

/// Reads a body of at most `max_body_bytes` within `body_read_timeout`, charging the
/// request budget for the buffer as it grows (so a slow sender holds only what it sent).
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<ReadBody, ApiError> {
    let limit = state.limits.max_body_bytes;
    let over = || {
        too_large(format!(
            "the request body is larger than the limit of {limit} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(over());
    }
    let deadline = tokio::time::Instant::now() + state.limits.body_read_timeout;
    let mut permit = state
        .request_budget
        .try_take(0)
        .ok_or_else(|| busy("request bodies"))?;
    let mut charged = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    let mut body = body;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} ms",
                        state.limits.body_read_timeout.as_millis()
                    ),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(bad(format!("reading the request body: {e}"))),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let need = buf.len() + data.len();
        if need > limit {
            return Err(over());
        }
        if need > charged {
            let mut cap = (charged * 2).max(need).max(16 << 10).min(limit);
            if let Some(d) = declared.and_then(|d| usize::try_from(d).ok()) {
                cap = cap.min(d.max(need));
            }
            let more = state
                .request_budget
                .try_take((cap - charged) as u64)
                .ok_or_else(|| busy("request bodies"))?;
            permit.merge(more);
            buf.reserve_exact(cap - buf.len());
            charged = cap;
        }
        buf.extend_from_slice(&data);
    }
    Ok(ReadBody {
        bytes: Bytes::from(buf),
        permit,
    })
}

/// Charges the request budget for parsing a JSON body of `len` bytes: a number takes at
/// least 2 bytes of JSON and 4 as f32, and the vector may double while it grows.
fn charge_json(state: &AppState, len: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    let bytes = (len as u64).saturating_mul(4);
    if !state.request_budget.fits(bytes) {
        return Err(too_large(format!(
            "a JSON body of {len} bytes needs {bytes} bytes to parse, more than the request \
             budget of {}",
            state.request_budget.total_bytes()
        )));
    }
    state
        .request_budget
        .try_take(bytes)
        .ok_or_else(|| busy("parsing JSON"))
}

/// A request's place in the worker pool, and the flag that stops its blocking work once
/// the request is gone (set when this is dropped: answered, timed out, or the client left).
struct Work {
    slot: Arc<OwnedSemaphorePermit>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Work {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Work {
    /// Waits for a place in the pool (within the request's timeout).
    async fn start(state: &AppState) -> Result<Work, ApiError> {
        let permit = state.pool.clone().acquire_owned().await.map_err(internal)?;
        Ok(Work {
            slot: Arc::new(permit),
            cancel: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Runs `f` on the blocking pool with `keep` (permits, buffers) and the pool place held
    /// until `f` returns, even if this request is gone by then.
    async fn blocking<T, K>(
        &self,
        keep: K,
        f: impl FnOnce(&AtomicBool) -> T + Send + 'static,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        K: Send + 'static,
    {
        let slot = self.slot.clone();
        let cancel = self.cancel.clone();
        tokio::task::spawn_blocking(move || {
            let out = f(&cancel);
            drop((keep, slot));
            out
        })
        .await
        .map_err(internal)
    }
}

/// Decodes one image file within the limits: the header first (413 / 400 before anything
/// is allocated), then the decode budget for what the header says the decode allocates,
/// then the decode and resize on the blocking pool, which holds the permit until it ends.
async fn decode_image(
    state: &Arc<AppState>,
    work: &Work,
    bytes: Bytes,
    name: String,
    side: usize,
) -> Result<Vec<f32>, (StatusCode, String)> {
    let refuse = |e: InputError| (input_status(&e), e.to_string());
    if bytes.is_empty() {
        return Err(refuse(InputError::Empty));
    }
    let limits = state.limits.decode_limits();
    let probe = shared::image::probe(&bytes, &name).map_err(|e| refuse(e.into()))?;
    probe.check(&limits, &name).map_err(|e| refuse(e.into()))?;
    let permit = state
        .decode_budget
        .take(probe.decode_bytes)
        .await
        .ok_or_else(|| {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{name}: decoding needs {} bytes, more than the decode budget of {}",
                    probe.decode_bytes,
                    state.decode_budget.total_bytes()
                ),
            )
        })?;
    let st = state.clone();
    let r = work
        .blocking(permit, move |cancel| {
            let r = image_input_limited(&bytes, &name, side, &limits, cancel);
            if matches!(r, Err(InputError::Cancelled)) {
                st.metrics.cancelled("decode");
            }
            r
        })
        .await
        .map_err(|e| (e.0, e.1))?;
    r.map_err(refuse)
}

/// Valid model inputs and, per item, whether it had one (in order) or why not.
struct Inputs {
    /// The valid items' images, NHWC, concatenated.
    pixels: Vec<f32>,
    items: Vec<Result<(), String>>,
}

/// Answers the valid inputs (each one image) on the blocking pool, holding `keep` until
/// done; invalid items keep their error. Updates the assurance output, the metrics and
/// the validity monitor's pending predictions.
async fn answer_items<K: Send + 'static>(
    state: &Arc<AppState>,
    work: &Work,
    inputs: Inputs,
    epsilon: f64,
    with_embedding: bool,
    keep: K,
) -> Result<Vec<Result<ApiAnswer, String>>, ApiError> {
    let model = state.slot.current();
    let st = state.clone();
    let t0 = Instant::now();
    let out = work
        .blocking(keep, move |cancel| {
            if cancel.load(Ordering::Relaxed) {
                st.metrics.cancelled("inference");
                return Err(internal("cancelled"));
            }
            let Inputs { pixels, items } = inputs;
            let (mut answers, emb) = if pixels.is_empty() {
                (vec![], vec![])
            } else {
                pipeline::answer(&model, &pixels, epsilon).map_err(internal)?
            };
            // adaptive calibration: the set is cut at the epsilon's current ACI level
            let monitor = st.monitor_for(&model);
            if let Some(level) = monitor.adaptive().and_then(|a| a.level(epsilon)) {
                let names = model.predictor.class_names();
                for a in &mut answers {
                    a.cut_at(level, names);
                }
            }
            drop(pixels);
            if cancel.load(Ordering::Relaxed) {
                // nobody will see these answers: they neither move the output nor wait for labels
                st.metrics.cancelled("answer");
                return Err(internal("cancelled"));
            }
            let dim = model.engine.embedding_dim();
            let sizes: Vec<usize> = answers.iter().map(|a| a.set.len()).collect();
            let seconds = t0.elapsed().as_secs_f64();
            st.health.answered(model.model_id(), seconds, &sizes);
            st.telemetry.answered(model.model_id(), seconds, &sizes);
            if let Some(a) = &st.assurance {
                a.update(sizes.iter().copied());
            }
            let rule = st.assurance.as_ref().map(|a| a.rule()).unwrap_or_default();
            let alerts = sizes.iter().filter(|&&s| rule.raises(s)).count() as u64;
            st.metrics.answers(sizes.iter().copied(), alerts);
            // every answer feeds the label-free drift test (no label needed)
            let free: Vec<f64> = answers.iter().map(|a| a.label_free).collect();
            monitor.inputs().observe(&free);
            let mut answers = answers.into_iter().zip(emb.chunks_exact(dim.max(1)));
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(match item {
                    Err(e) => Err(e),
                    Ok(()) => {
                        let (answer, e) = answers
                            .next()
                            .ok_or_else(|| internal("fewer answers than inputs"))?;
                        let id = PredictionId::random();
                        monitor.record(id, e, &answer.set, epsilon);
                        Ok(ApiAnswer {
                            id,
                            answer,
                            model_id: model.model_id().to_string(),
                            embedding: with_embedding.then(|| e.to_vec()),
                        })
                    }
                });
            }
            Ok(out)
        })
        .await?;
    if let Err(e) = &out {
        // a failure inside the model (not a cancelled request) counts against its health
        if e.0 == StatusCode::INTERNAL_SERVER_ERROR && !e.1.contains("cancelled") {
            let id = state.slot.current();
            state.health.failed(id.model_id());
            state.telemetry.failed(id.model_id());
        }
    }
    out
}

async fn predict(
    State(state): State<Arc<AppState>>,
    Query(q): Query<EpsilonQuery>,
    req: Request,
) -> Result<Json<ApiAnswer>, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(&state, &parts.headers, body).await?;
    let work = Work::start(&state).await?;
    let side = state.slot.current().side();
    let (inputs, body_eps, keep) = if is_json(&parts.headers) {
        let parse = charge_json(&state, body.bytes.len())?;
        let bytes = body.bytes.clone();
        let t: TensorBody = work
            .blocking((), move |_| serde_json::from_slice::<TensorBody>(&bytes))
            .await?
            .map_err(|e| bad(format!("bad JSON body: {e}")))?;
        let n = check_tensor(&t.tensor, side).map_err(bad)?;
        if n != 1 {
            return Err(bad(format!(
                "/v1/predict takes one image, the tensor holds {n}: use /v1/predict/batch"
            )));
        }
        let inputs = Inputs {
            pixels: t.tensor,
            items: vec![Ok(())],
        };
        (inputs, t.epsilon, (body.permit, Some(parse)))
    } else {
        let x = decode_image(&state, &work, body.bytes, "request body".into(), side)
            .await
            .map_err(|(st, e)| ApiError(st, format!("request body: {e}")))?;
        let inputs = Inputs {
            pixels: x,
            items: vec![Ok(())],
        };
        (inputs, None, (body.permit, None))
    };
    let epsilon = epsilon_of(&state, q.epsilon, body_eps)?;
    let mut out = answer_items(&state, &work, inputs, epsilon, q.embedding, keep).await?;
    match out.pop() {
        Some(Ok(a)) => Ok(Json(a)),
        Some(Err(e)) => Err(bad(e)),
        None => Err(internal("no answer")),
    }
}

async fn predict_batch(
    State(state): State<Arc<AppState>>,
    Query(q): Query<EpsilonQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(&state, &parts.headers, body).await?;
    let work = Work::start(&state).await?;
    let side = state.slot.current().side();
    let parse = charge_json(&state, body.bytes.len())?;
    let bytes = body.bytes.clone();
    let b: BatchBody = work
        .blocking((), move |_| serde_json::from_slice::<BatchBody>(&bytes))
        .await?
        .map_err(|e| bad(format!("bad JSON body: {e}")))?;
    let epsilon = epsilon_of(&state, q.epsilon, b.epsilon)?;
    let per = side * side * 3;
    let max_batch = state.limits.max_batch;
    let too_many = |n: usize| bad(format!("{n} inputs in one batch, the limit is {max_batch}"));
    let mut too_large_items = 0usize;
    let (inputs, pixels_permit) = match (b.tensor, b.images.is_empty()) {
        (Some(_), false) => return Err(bad("give either \"images\" or \"tensor\", not both")),
        (Some(t), true) => {
            let n = check_tensor(&t, side).map_err(bad)?;
            if n > max_batch {
                return Err(too_many(n));
            }
            let inputs = Inputs {
                pixels: t,
                items: vec![Ok(()); n],
            };
            (inputs, None)
        }
        (None, false) => {
            let images = b.images;
            if images.len() > max_batch {
                return Err(too_many(images.len()));
            }
            let pixel_bytes = (images.len() * per * std::mem::size_of::<f32>()) as u64;
            if !state.request_budget.fits(pixel_bytes) {
                return Err(too_large(format!(
                    "{} images need {pixel_bytes} bytes of pixels, more than the request budget",
                    images.len()
                )));
            }
            let permit = state
                .request_budget
                .try_take(pixel_bytes)
                .ok_or_else(|| busy("batch pixels"))?;
            let mut pixels = Vec::with_capacity(images.len() * per);
            let mut items = Vec::with_capacity(images.len());
            for (i, s) in images.iter().enumerate() {
                let name = format!("images[{i}]");
                let bytes = match base64::engine::general_purpose::STANDARD.decode(s) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => {
                        items.push(Err(format!("{name}: bad base64: {e}")));
                        continue;
                    }
                };
                match decode_image(&state, &work, bytes, name.clone(), side).await {
                    Ok(x) => {
                        pixels.extend_from_slice(&x);
                        items.push(Ok(()));
                    }
                    Err((st, e)) => {
                        too_large_items += usize::from(st == StatusCode::PAYLOAD_TOO_LARGE);
                        items.push(Err(format!("{name}: {e}")));
                    }
                }
            }
            (Inputs { pixels, items }, Some(permit))
        }
        (None, true) => return Err(bad("no input: give \"images\" (base64) or \"tensor\"")),
    };
    let keep = (body.permit, parse, pixels_permit);
    let out = answer_items(&state, &work, inputs, epsilon, q.embedding, keep).await?;
    let failed = out.iter().filter(|r| r.is_err()).count();
    let results: Vec<serde_json::Value> = out
        .into_iter()
        .map(|r| match r {
            Ok(a) => serde_json::to_value(a).unwrap_or_else(|e| json!({ "error": e.to_string() })),
            Err(e) => json!({ "error": e }),
        })
        .collect();
    // every input refused: the request as a whole is bad (too large if every one was)
    let status = if failed > 0 && failed == results.len() {
        if too_large_items == failed {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        }
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
    let monitor = state.monitor_for(&m);
    let validity = monitor.snapshot();
    let drift = monitor.inputs().snapshot();
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
        "drift": drift,
    }))
}

/// The rollout state machine's state (404 when the agent runs without rollouts).
async fn rollout_info(State(state): State<Arc<AppState>>) -> Response {
    match state.rollout.get() {
        Some(v) => Json(v.get()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "this agent takes no rollouts (`edge-agent serve`); `edge-agent run` does" })),
        )
            .into_response(),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "model_id": state.slot.current().model_id() }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    state.metrics.render(&mut out);
    let m = state.slot.current();
    let monitor = state.monitor_for(&m);
    let v = monitor.snapshot();
    let d = monitor.inputs().snapshot();
    let id = &v.model_id;
    let gauges: [(&str, &str, f64); 10] = [
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
        (
            "resets_total",
            "Explicit resets of the validity figures (POST /v1/validity/reset).",
            v.resets as f64,
        ),
    ];
    for (name, help, value) in gauges {
        out.push_str(&format!(
            "# HELP edge_agent_validity_{name} {help}\n# TYPE edge_agent_validity_{name} gauge\nedge_agent_validity_{name}{{model_id=\"{id}\"}} {value}\n"
        ));
    }
    let drift: [(&str, &str, f64); 5] = [
        (
            "available",
            "1 when the bundle has label-free calibration scores (else nothing is tested).",
            f64::from(u8::from(d.available)),
        ),
        (
            "answers_total",
            "Answers whose label-free score was tested.",
            d.answers as f64,
        ),
        (
            "mean_score",
            "Mean label-free score of those answers (the calibration mean is in /v1/model).",
            d.mean_score,
        ),
        (
            "martingale",
            "Label-free conformal test martingale over the answers' scores.",
            d.martingale,
        ),
        (
            "alarm",
            "1 when it crossed 1/delta: the inputs no longer look like the calibration inputs.",
            f64::from(u8::from(d.alarm)),
        ),
    ];
    for (name, help, value) in drift {
        out.push_str(&format!(
            "# HELP edge_agent_drift_{name} {help}\n# TYPE edge_agent_drift_{name} gauge\nedge_agent_drift_{name}{{model_id=\"{id}\"}} {value}\n"
        ));
    }
    out.push_str(
        "# HELP edge_agent_memory_budget_bytes Bytes all requests in flight may hold, by budget.\n# TYPE edge_agent_memory_budget_bytes gauge\n",
    );
    for (pool, b) in [
        ("request", &state.request_budget),
        ("decode", &state.decode_budget),
    ] {
        out.push_str(&format!(
            "edge_agent_memory_budget_bytes{{budget=\"{pool}\"}} {}\n",
            b.total_bytes()
        ));
    }
    out.push_str(
        "# HELP edge_agent_memory_in_use_bytes Bytes of each budget held now (bodies, parsed JSON, decodes).\n# TYPE edge_agent_memory_in_use_bytes gauge\n",
    );
    for (pool, b) in [
        ("request", &state.request_budget),
        ("decode", &state.decode_budget),
    ] {
        out.push_str(&format!(
            "edge_agent_memory_in_use_bytes{{budget=\"{pool}\"}} {}\n",
            b.in_use_bytes()
        ));
    }
    out.push_str(&format!(
        "# HELP edge_agent_workers_busy Places of the worker pool held (requests, or their blocking work after they ended).\n# TYPE edge_agent_workers_busy gauge\nedge_agent_workers_busy {}\n",
        state
            .limits
            .concurrency
            .saturating_sub(state.pool.available_permits())
    ));
    out.push_str(&format!(
        "# HELP edge_agent_model_info The active model.\n# TYPE edge_agent_model_info gauge\nedge_agent_model_info{{model_id=\"{}\",runtime=\"{}\"}} 1\n",
        m.model_id(),
        m.engine.runtime().name()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Compares without an early exit on the first differing byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Ok` if `expected` is `None` or the request carries `Authorization: Bearer <expected>`.
fn authorize(headers: &HeaderMap, expected: Option<&str>, what: &str) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if same_secret(t.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            format!("{what} needs the configured bearer token (Authorization: Bearer ...)"),
        )),
    }
}

fn peer(req_ext: &axum::http::Extensions) -> String {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackItem {
    /// The answer's id (32 hex digits).
    id: String,
    label: u16,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FeedbackBody {
    One(FeedbackItem),
    Many { feedback: Vec<FeedbackItem> },
}

async fn feedback(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    authorize(
        &parts.headers,
        state.access.feedback_token.as_deref(),
        "feedback",
    )?;
    let body = read_body(&state, &parts.headers, body).await?;
    let work = Work::start(&state).await?;
    let parse = charge_json(&state, body.bytes.len())?;
    let model = state.slot.current();
    let monitor = state.monitor_for(&model);
    let bytes = body.bytes.clone();
    let st = state.clone();
    let keep = (body.permit, parse);
    let (n, errors, snap) = work
        .blocking(keep, move |cancel| {
            let body: FeedbackBody = serde_json::from_slice(&bytes).map_err(|e| {
                bad(format!(
                    "bad JSON body ({{\"id\": \"<answer id>\", \"label\": L}} or {{\"feedback\": [...]}}): {e}"
                ))
            })?;
            let items = match body {
                FeedbackBody::One(i) => vec![i],
                FeedbackBody::Many { feedback } => feedback,
            };
            let mut errors = vec![];
            for it in &items {
                if cancel.load(Ordering::Relaxed) {
                    st.metrics.cancelled("feedback");
                    return Err(internal("cancelled"));
                }
                if let Err(e) = monitor.feedback(&it.id, it.label, &model) {
                    errors.push(e);
                }
            }
            Ok((items.len(), errors, monitor.snapshot()))
        })
        .await??;
    if errors.len() == n {
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
        "accepted": n - errors.len(),
        "errors": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        "validity": snap,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    /// Why: logged with the caller's address.
    reason: String,
}

/// `POST /v1/validity/reset`: starts the validity figures of the active model afresh
/// (the drift alarms, labelled and label-free, and the violation flag latch until this). Needs the admin token; with
/// none configured it is disabled. Logged as a warning with the caller and the reason.
async fn validity_reset(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let Some(token) = state.access.admin_token.as_deref() else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "validity reset is disabled: configure admin_token_file (--admin-token-file)".into(),
        ));
    };
    let who = peer(&parts.extensions);
    if let Err(e) = authorize(&parts.headers, Some(token), "validity reset") {
        tracing::warn!(peer = %who, "validity reset refused: missing or wrong admin token");
        return Err(e);
    }
    let body = read_body(&state, &parts.headers, body).await?;
    let r: ResetBody = serde_json::from_slice(&body.bytes)
        .map_err(|e| bad(format!("bad JSON body ({{\"reason\": \"...\"}}): {e}")))?;
    let reason = r.reason.trim();
    if reason.is_empty() || reason.len() > 1000 {
        return Err(bad("\"reason\" must say why, in 1 to 1000 bytes"));
    }
    let model = state.slot.current();
    let monitor = state.monitor_for(&model);
    let drift_before = monitor.inputs().snapshot();
    let before = monitor.reset(&who, reason);
    Ok(Json(json!({
        "before": before,
        "validity": monitor.snapshot(),
        "drift_before": drift_before,
        "drift": monitor.inputs().snapshot(),
    }))
    .into_response())
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

/// The service's routes with their limits. Layers, outside in: `track` (every status is
/// counted, 408 included), then for the prediction, feedback and reset routes the request
/// timeout, inside which each handler reads its body and takes its place in the pool.
pub fn router(state: Arc<AppState>) -> Router {
    let limits = state.limits.clone();
    let pooled = Router::new()
        .route("/v1/predict", post(predict))
        .route("/v1/predict/batch", post(predict_batch))
        .route("/v1/feedback", post(feedback))
        .route("/v1/validity/reset", post(validity_reset))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ));
    Router::new()
        .route("/v1/model", get(model_info))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/rollout", get(rollout_info))
        .merge(pooled)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Serves until `shutdown` completes, then finishes the requests in flight (for at most
/// the request timeout plus the header timeout). Each connection is served by hyper's
/// HTTP/1 server with the header read timeout; the peer address reaches the handlers as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let limits = state.limits.clone();
    let app = router(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // headers beyond this are refused (431); bodies stream through it in pieces
        .max_buf_size(64 << 10);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // e.g. out of file descriptors: wait a little rather than spin
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let app = app.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), req)
            });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    let drain = limits.timeout + limits.header_read_timeout;
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(seconds = drain.as_secs_f64(), "connections still open after the drain time: closing them");
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_cannot_work_together_are_refused() {
        assert_eq!(Limits::default().check(), Ok(()));
        let l = Limits {
            max_decoded_bytes: 200 << 20,
            ..Limits::default()
        };
        assert!(matches!(l.check(), Err(LimitsError::DecodeBudget { .. })));
        let l = Limits {
            max_body_bytes: 100 << 20,
            ..Limits::default()
        };
        assert!(matches!(l.check(), Err(LimitsError::RequestBudget { .. })));
        let l = Limits {
            body_read_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert_eq!(l.check(), Err(LimitsError::Zero("body_read_timeout")));
    }

    #[tokio::test]
    async fn budgets_grant_in_kib_and_refuse_what_never_fits() {
        let b = Budget::new(10 * 1024);
        let p = b.try_take(4000).unwrap();
        assert_eq!(b.in_use_bytes(), 4096);
        assert!(b.try_take(7 * 1024).is_none());
        assert!(b.take(11 * 1024).await.is_none());
        drop(p);
        assert_eq!(b.in_use_bytes(), 0);
        assert!(b.take(10 * 1024).await.is_some());
        assert!(
            same_secret(b"abc", b"abc")
                && !same_secret(b"abc", b"abd")
                && !same_secret(b"ab", b"abc")
        );
    }
}
