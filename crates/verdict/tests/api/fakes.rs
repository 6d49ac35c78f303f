//! The outside world, on loopback: a fake Stripe with Stripe's idempotency
//! semantics and scripted faults, a webhook receiver, an SMTP sink.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

/// A listener that resets (RST, no answer at all) one connection in
/// `every` it accepts, the first among them, counting the resets.
struct Resetting {
    inner: TcpListener,
    every: usize,
    accepted: usize,
    resets: Arc<Mutex<usize>>,
}

impl axum::serve::Listener for Resetting {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.inner.accept().await else { continue };
            self.accepted += 1;
            if self.accepted % self.every == 1 {
                let _ = stream.set_zero_linger();
                drop(stream);
                *self.resets.lock().unwrap() += 1;
                continue;
            }
            return (stream, address);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Serves `router` behind a `Resetting` listener; every answer closes its
/// connection.
async fn serve_resetting(router: Router, every: usize, resets: Arc<Mutex<usize>>) -> String {
    let router = router.layer(axum::middleware::map_response(async |mut response: Response| {
        response.headers_mut().insert("connection", "close".parse().unwrap());
        response
    }));
    let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = inner.local_addr().unwrap();
    let listener = Resetting { inner, every, accepted: 0, resets };
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

/// What the fake does with the next transfer request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status; Stripe saves it and replays it for the key.
    Status(u16),
    /// Make the transfer, but answer only after this long (the client has
    /// given up by then): the nastiest case.
    SlowSuccess(Duration),
    /// Make the transfer and answer at once (a script's healthy turn).
    Succeed,
    /// Make the transfer, send the status and headers at once, and the
    /// body only after this long (the client gives up while reading it).
    SlowBody(Duration),
    /// Make the transfer, tell `arrived`, and answer only once `release`
    /// is notified: a transfer held in flight while the test acts.
    Hold { arrived: Arc<tokio::sync::Notify>, release: Arc<tokio::sync::Notify> },
}

#[derive(Clone, Debug)]
pub struct TransferCall {
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub form: Vec<(String, String)>,
}

impl TransferCall {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

#[derive(Default)]
struct StripeState {
    script: VecDeque<Fault>,
    calls: Vec<TransferCall>,
    /// Transfers made: the effects.
    transfers: Vec<Value>,
    /// Saved responses per idempotency key.
    saved: HashMap<String, (u16, Value)>,
    lookups: usize,
    /// Reversals made (the effects), and their saved answers per key.
    reversals: Vec<Value>,
    saved_reversals: HashMap<String, Value>,
}

#[derive(Clone)]
pub struct FakeStripe {
    pub base: String,
    state: Arc<Mutex<StripeState>>,
    resets: Arc<Mutex<usize>>,
}

impl FakeStripe {
    pub async fn start(script: Vec<Fault>) -> FakeStripe {
        let state =
            Arc::new(Mutex::new(StripeState { script: script.into(), ..StripeState::default() }));
        let router = Router::new()
            .route("/v1/transfers", post(create_transfer).get(list_transfers))
            .route("/v1/transfers/{id}/reversals", post(create_reversal))
            .with_state(state.clone());
        FakeStripe { base: serve(router).await, state, resets: Arc::default() }
    }

    /// The same fake, which also resets one connection in `every` when it
    /// accepts it (before any request is read) and closes each one after
    /// answering, so that every call connects anew.
    pub async fn start_resetting(script: Vec<Fault>, every: usize) -> FakeStripe {
        let state =
            Arc::new(Mutex::new(StripeState { script: script.into(), ..StripeState::default() }));
        let router = Router::new()
            .route("/v1/transfers", post(create_transfer).get(list_transfers))
            .route("/v1/transfers/{id}/reversals", post(create_reversal))
            .with_state(state.clone());
        let resets = Arc::default();
        let base = serve_resetting(router, every, Arc::clone(&resets)).await;
        FakeStripe { base, state, resets }
    }

    /// Connections reset before any answer.
    pub fn resets(&self) -> usize {
        *self.resets.lock().unwrap()
    }

    pub fn calls(&self) -> Vec<TransferCall> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn transfers(&self) -> Vec<Value> {
        self.state.lock().unwrap().transfers.clone()
    }

    pub fn lookups(&self) -> usize {
        self.state.lock().unwrap().lookups
    }

    /// Reversals made: `{id, transfer, amount}`.
    pub fn reversals(&self) -> Vec<Value> {
        self.state.lock().unwrap().reversals.clone()
    }
}

async fn create_reversal(
    State(state): State<Arc<Mutex<StripeState>>>,
    axum::extract::Path(transfer): axum::extract::Path<String>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let mut state = state.lock().unwrap();
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(saved) = key.as_ref().and_then(|key| state.saved_reversals.get(key)) {
        return Json(saved.clone()).into_response();
    }
    let Some(made) = state.transfers.iter().find(|t| t["id"] == transfer.as_str()).cloned() else {
        let body = json!({"error": {"message": format!("No such transfer: {transfer}")}});
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    let amount = form
        .iter()
        .find(|(name, _)| name == "amount")
        .and_then(|(_, value)| value.parse::<i64>().ok())
        .or_else(|| made["amount"].as_i64());
    let reversal = json!({
        "id": format!("trr_{}", state.reversals.len() + 1),
        "object": "transfer_reversal",
        "transfer": transfer,
        "amount": amount,
    });
    state.reversals.push(reversal.clone());
    if let Some(key) = key {
        state.saved_reversals.insert(key, reversal.clone());
    }
    Json(reversal).into_response()
}

/// How the fake holds back a transfer's answer.
enum Delay {
    Answer(Duration),
    Body(Duration),
    Hold(Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>),
}

async fn create_transfer(
    State(state): State<Arc<Mutex<StripeState>>>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let key = header("idempotency-key");
    let (status, body, delay, replayed) = {
        let mut state = state.lock().unwrap();
        state.calls.push(TransferCall {
            idempotency_key: key.clone(),
            authorization: header("authorization"),
            content_type: header("content-type"),
            form: form.clone(),
        });
        if let Some((status, body)) = key.as_ref().and_then(|key| state.saved.get(key)).cloned() {
            (status, body, None, true)
        } else {
            let fault = state.script.pop_front();
            let (status, body, delay) = match fault {
                Some(Fault::Status(status)) => {
                    let body = json!({"error": {"message": format!("scripted {status}")}});
                    (status, body, None)
                }
                other => {
                    let field =
                        |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                    let transfer = json!({
                        "id": format!("tr_{}", state.transfers.len() + 1),
                        "object": "transfer",
                        "amount": field("amount").and_then(|a| a.parse::<i64>().ok()),
                        "currency": field("currency"),
                        "destination": field("destination"),
                        "transfer_group": field("transfer_group"),
                        "metadata": {"session_id": field("metadata[session_id]"), "payout_id": field("metadata[payout_id]")},
                    });
                    state.transfers.push(transfer.clone());
                    let delay = match other {
                        Some(Fault::SlowSuccess(delay)) => Some(Delay::Answer(delay)),
                        Some(Fault::SlowBody(delay)) => Some(Delay::Body(delay)),
                        Some(Fault::Hold { arrived, release }) => {
                            Some(Delay::Hold(arrived, release))
                        }
                        _ => None,
                    };
                    (200, transfer, delay)
                }
            };
            // Stripe saves a result only once the endpoint ran: a request
            // refused as rate-limited (429) or concurrent (409) is not saved.
            // Nor is one refused before it ran: bad credentials (401/403).
            if let Some(key) = &key
                && !matches!(status, 401 | 403 | 409 | 429)
            {
                state.saved.insert(key.clone(), (status, body.clone()));
            }
            (status, body, delay, false)
        }
    };
    let mut response = match delay {
        Some(Delay::Hold(arrived, release)) => {
            arrived.notify_one();
            release.notified().await;
            (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
        }
        Some(Delay::Body(delay)) => {
            let bytes = body.to_string();
            let slow = futures::stream::once(async move {
                tokio::time::sleep(delay).await;
                Ok::<_, std::convert::Infallible>(bytes)
            });
            let mut response = axum::body::Body::from_stream(slow).into_response();
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            response.headers_mut().insert("content-type", "application/json".parse().unwrap());
            response
        }
        Some(Delay::Answer(delay)) => {
            tokio::time::sleep(delay).await;
            (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
        }
        None => (StatusCode::from_u16(status).unwrap(), Json(body)).into_response(),
    };
    if replayed {
        response.headers_mut().insert("idempotent-replayed", "true".parse().unwrap());
    }
    response
}

async fn list_transfers(
    State(state): State<Arc<Mutex<StripeState>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let mut state = state.lock().unwrap();
    state.lookups += 1;
    let group = query.get("transfer_group").cloned();
    let data: Vec<Value> = state
        .transfers
        .iter()
        .filter(|t| t["transfer_group"].as_str() == group.as_deref())
        .cloned()
        .collect();
    Json(json!({"object": "list", "data": data, "has_more": false}))
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: String,
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    /// Answer this status to everything (success when None).
    failing: Option<u16>,
    /// Fail this percentage of deliveries at random (5xx, or too slow),
    /// drawn from a seeded generator (so that a failing run's seed is
    /// worth printing).
    flaky: Option<(u32, rand::rngs::StdRng)>,
    /// `webhook-id`s answered with success.
    delivered: std::collections::HashSet<String>,
    /// Connections reset before any answer.
    resets: Arc<Mutex<usize>>,
    in_flight: HashMap<String, usize>,
    concurrent_duplicates: usize,
    delay: Option<Duration>,
}

/// A webhook endpoint that records what it gets.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start(failing: Option<u16>, delay: Option<Duration>) -> Receiver {
        let state =
            Arc::new(Mutex::new(ReceiverState { failing, delay, ..ReceiverState::default() }));
        let router = Router::new().route("/hook", post(receive)).with_state(state.clone());
        Receiver { url: format!("{}/hook", serve(router).await), state }
    }

    /// A receiver failing `percent` % of deliveries at random, drawn from
    /// `seed`: 500, 503, or a 503 after `slow` (past the sender's timeout).
    /// Besides, a tenth of its connections are reset when accepted, and
    /// every answer closes its connection (so each delivery connects anew).
    pub async fn start_flaky(percent: u32, slow: Duration, seed: u64) -> Receiver {
        use rand::SeedableRng;
        let state = Arc::new(Mutex::new(ReceiverState {
            flaky: Some((percent, rand::rngs::StdRng::seed_from_u64(seed))),
            delay: Some(slow),
            ..ReceiverState::default()
        }));
        let router = Router::new().route("/hook", post(receive)).with_state(state.clone());
        let resets = state.lock().unwrap().resets.clone();
        let base = serve_resetting(router, 10, resets).await;
        Receiver { url: format!("{base}/hook"), state }
    }

    /// Connections reset before any answer.
    pub fn resets(&self) -> usize {
        *self.state.lock().unwrap().resets.lock().unwrap()
    }

    /// Distinct `webhook-id`s answered with success.
    pub fn delivered(&self) -> usize {
        self.state.lock().unwrap().delivered.len()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Deliveries of one `webhook-id` that overlapped in time.
    pub fn concurrent_duplicates(&self) -> usize {
        self.state.lock().unwrap().concurrent_duplicates
    }

    pub fn events(&self) -> Vec<Value> {
        self.received().iter().map(|r| serde_json::from_str(&r.body).unwrap()).collect()
    }
}

/// For a flaky receiver, what to answer (status, or success) and how late.
fn flaky_answer(
    state: &Mutex<ReceiverState>,
    id: &str,
    headers: &HeaderMap,
    body: &str,
) -> Option<(Option<u16>, Option<Duration>)> {
    use rand::Rng;
    let mut guard = state.lock().unwrap();
    let state = &mut *guard;
    let (percent, rng) = state.flaky.as_mut()?;
    let answer = if rng.random_range(0..100) >= *percent {
        state.delivered.insert(id.to_owned());
        (None, None)
    } else {
        // The slow answer is a failure too: on a loaded machine the
        // sender may still read it (its timer and this one can fire in
        // the same turn), and then it must not count as delivered.
        match rng.random_range(0..5) {
            0 => (Some(503), state.delay),
            1 | 2 => (Some(500), None),
            _ => (Some(503), None),
        }
    };
    state.received.push(Received { headers: headers.clone(), body: body.to_owned() });
    Some(answer)
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    if let Some((failing, delay)) = flaky_answer(&state, &id, &headers, &body) {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        return failing.map_or(StatusCode::NO_CONTENT, |s| StatusCode::from_u16(s).unwrap());
    }
    let (failing, delay) = {
        let mut state = state.lock().unwrap();

        let in_flight = state.in_flight.entry(id.clone()).or_default();
        *in_flight += 1;
        if *in_flight > 1 {
            state.concurrent_duplicates += 1;
        }
        state.received.push(Received { headers, body });
        (state.failing, state.delay)
    };
    // Leaves the in-flight count even when the sender hangs up and this
    // handler is dropped mid-way (a killed worker does that).
    struct InFlight(Arc<Mutex<ReceiverState>>, String);
    impl Drop for InFlight {
        fn drop(&mut self) {
            if let Ok(mut state) = self.0.lock()
                && let Some(count) = state.in_flight.get_mut(&self.1)
            {
                *count -= 1;
            }
        }
    }
    let _in_flight = InFlight(state.clone(), id);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match failing {
        Some(status) => StatusCode::from_u16(status).unwrap(),
        None => StatusCode::NO_CONTENT,
    }
}

/// An SMTP server on loopback that accepts everything and keeps the
/// messages: a real SMTP conversation, no delivery.
#[derive(Clone)]
pub struct SmtpSink {
    pub url: String,
    messages: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let messages: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = messages.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 sink ESMTP ready\r\n").await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb =
                            line.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250-sink\r\n250 8BITMIME\r\n",
                            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
                            "DATA" => {
                                let _ = write.write_all(b"354 end with .\r\n").await;
                                let mut message = String::new();
                                while let Ok(Some(line)) = lines.next_line().await {
                                    if line == "." {
                                        break;
                                    }
                                    message.push_str(
                                        line.strip_prefix('.')
                                            .filter(|_| line.starts_with(".."))
                                            .unwrap_or(&line),
                                    );
                                    message.push('\n');
                                }
                                sink.lock().unwrap().push(message);
                                b"250 queued\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                break;
                            }
                            _ => b"502 unknown\r\n",
                        };
                        let _ = write.write_all(reply).await;
                    }
                });
            }
        });
        SmtpSink { url, messages }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}
