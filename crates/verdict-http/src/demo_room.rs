//! The demo room, served by `verdict demo` only: `/demo` lists a few demo
//! sessions, and `/demo/rooms/{id}?as=customer|provider` opens one as that
//! party in the browser, through the TypeScript client (`clients/
//! typescript`, bundled with esbuild into `assets/demo-room.js` and
//! compiled in). The page joins, heartbeats, leaves when closed, ends
//! without a status and shows the decision the server made.
//!
//! Tokens are minted here for the demo's own room users only: a room page
//! exists only for a session this process opened, and its token names that
//! session's party. The pages carry the dashboard's headers (the same CSP:
//! no inline script, nothing from elsewhere).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, middleware};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use verdict_core::{Kind, Role};
use verdict_store::{Actor, Session};

use crate::auth::JwtKeys;
use crate::dto::CreateSessionRequest;
use crate::wire::{Path, StrictQuery};
use crate::{ApiError, AppState, Router};

/// Rooms the demo keeps listed; opening one more drops the oldest.
const ROOMS_MAX: usize = 20;
/// Rooms one demo process opens at most (the form can be pressed, or
/// posted to, only so often).
const ROOMS_OPENED_MAX: u64 = 200;
/// How long a room page's token lives.
const TOKEN_SECONDS: i64 = 2 * 3600;

const SCRIPT: &str = include_str!("../assets/demo-room.js");
const STYLES: &str = include_str!("../assets/demo-room.css");

/// The sessions this demo opened for the browser, newest last.
pub struct DemoRooms {
    keys: Arc<JwtKeys>,
    rooms: Mutex<Vec<String>>,
    opened: std::sync::atomic::AtomicU64,
}

impl DemoRooms {
    pub fn new(keys: Arc<JwtKeys>) -> Arc<DemoRooms> {
        Arc::new(DemoRooms { keys, rooms: Mutex::new(Vec::new()), opened: Default::default() })
    }

    /// Opens a room: a `waiting` session between two demo users of its
    /// own, whose own presence calls count (no video platform room).
    pub async fn open(&self, state: &AppState, kind: Kind) -> Result<String, ApiError> {
        let n = self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n > ROOMS_OPENED_MAX {
            return Err(ApiError::LimitReached(format!(
                "this demo has opened its {ROOMS_OPENED_MAX} rooms; restart it for more"
            )));
        }
        let now = state.clock.now();
        let id = format!("demo-room-{}-{n}", now.0 / 1000);
        let request: CreateSessionRequest = serde_json::from_value(serde_json::json!({
            "id": id,
            "kind": kind.as_str(),
            "customer_id": format!("demo-room-customer-{n}"),
            "provider_id": format!("demo-room-provider-{n}"),
            "price": {"mode": "per_minute", "amount_cents": 100, "currency": "usd"},
            "metadata": {"demo_room": true},
        }))
        .map_err(|error| ApiError::Internal(format!("demo room request: {error}")))?;
        let new = request.validate(id.clone(), &state.presence_sources)?;
        let actor = Actor { role: Role::Service, id: "demo".into() };
        state.store.create_session(new, &actor, None, now).await?;
        let mut rooms = self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        rooms.push(id.clone());
        if rooms.len() > ROOMS_MAX {
            rooms.remove(0);
        }
        Ok(id)
    }

    fn listed(&self) -> Vec<String> {
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn is_listed(&self, id: &str) -> bool {
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().any(|r| r == id)
    }
}

pub(crate) fn router(rooms: Arc<DemoRooms>, state: &AppState) -> Router {
    Router::new()
        .route("/demo", get(list))
        .route("/demo/rooms", post(open_room))
        .route("/demo/rooms/{id}", get(room))
        .route(
            "/demo/assets/room.js",
            get(|| async { crate::dashboard::asset("text/javascript", SCRIPT) }),
        )
        .route(
            "/demo/assets/room.css",
            get(|| async { crate::dashboard::asset("text/css", STYLES) }),
        )
        .layer(Extension(rooms))
        .layer(middleware::from_fn_with_state(
            state.dashboard_frame_ancestors.clone(),
            crate::dashboard::security_headers,
        ))
}

async fn list(
    State(state): State<AppState>,
    Extension(rooms): Extension<Arc<DemoRooms>>,
) -> Result<Html<String>, ApiError> {
    let mut sessions = Vec::new();
    for id in rooms.listed().iter().rev() {
        if let Some(session) = state.store.session(id).await? {
            sessions.push(session);
        }
    }
    Ok(Html(list_page(&sessions).into_string()))
}

/// `POST /demo/rooms`: one more room (the form on `/demo`). Only from the
/// demo's own page: a browser marks a post from another site, and that one
/// is refused.
async fn open_room(
    State(state): State<AppState>,
    Extension(rooms): Extension<Arc<DemoRooms>>,
    headers: axum::http::HeaderMap,
) -> Result<Redirect, ApiError> {
    let site = headers.get("sec-fetch-site").and_then(|value| value.to_str().ok());
    if site.is_some_and(|site| site != "same-origin" && site != "none") {
        return Err(ApiError::Forbidden("rooms are opened from the demo's own /demo page".into()));
    }
    let kind = if rooms.listed().len() % 2 == 0 { Kind::Chat } else { Kind::Video };
    rooms.open(&state, kind).await?;
    Ok(Redirect::to("/demo"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomQuery {
    #[serde(rename = "as")]
    party: RoomParty,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum RoomParty {
    Customer,
    Provider,
}

impl RoomParty {
    fn as_str(self) -> &'static str {
        match self {
            RoomParty::Customer => "customer",
            RoomParty::Provider => "provider",
        }
    }

    fn other(self) -> RoomParty {
        match self {
            RoomParty::Customer => RoomParty::Provider,
            RoomParty::Provider => RoomParty::Customer,
        }
    }
}

async fn room(
    State(state): State<AppState>,
    Extension(rooms): Extension<Arc<DemoRooms>>,
    Path(id): Path<String>,
    StrictQuery(query): StrictQuery<RoomQuery>,
) -> Result<Response, ApiError> {
    if !rooms.is_listed(&id) {
        return Err(ApiError::NotFound(format!("no demo room {id}: open one on /demo")));
    }
    let session = state
        .store
        .session(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("session {id} not found")))?;
    let (role, sub) = match query.party {
        RoomParty::Customer => (Role::Customer, session.customer_id.as_str()),
        RoomParty::Provider => (Role::Provider, session.provider_id.as_str()),
    };
    let expires = verdict_store::clock::system_now_millis() / 1000 + TOKEN_SECONDS;
    let token = rooms.keys.mint(role, sub, expires);
    let page = room_page(&session, query.party, &token);
    Ok((StatusCode::OK, Html(page.into_string())).into_response())
}

fn layout(title: &str, body: Markup, script: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                (crate::dashboard::head_common(&format!("{title} · verdict demo")))
                link rel="stylesheet" href="/demo/assets/room.css";
                @if script {
                    script src="/demo/assets/room.js" defer {}
                }
            }
            body {
                header.top {
                    a href="/demo" { "verdict · demo rooms" }
                    a href="/admin/sessions/session-health" { "dashboard" }
                }
                (body)
            }
        }
    }
}

fn list_page(sessions: &[Session]) -> Markup {
    layout(
        "Demo rooms",
        html! {
            div.page {
                h1 { "Demo rooms" }
                p {
                    "Each room is a session between two demo users. Open it as the customer "
                    "in one window and as the provider in another: each page joins, keeps "
                    "its presence with heartbeats, leaves when it is closed, and shows what "
                    "verdict decided when either party ends it."
                }
                form method="post" action="/demo/rooms" {
                    button type="submit" id="open-room" { "Open a new room" }
                }
                div.card.scroll {
                    table #rooms {
                        thead { tr { th { "Session" } th { "Kind" } th { "Status" } th { "Join as" } } }
                        tbody {
                            @for session in sessions {
                                tr data-session=(session.id) {
                                    td { code { (session.id) } }
                                    td { (session.kind.as_str()) }
                                    td.status { (session.status.as_str()) }
                                    td.join {
                                        a.customer href=(room_url(&session.id, RoomParty::Customer)) { "customer" }
                                        " · "
                                        a.provider href=(room_url(&session.id, RoomParty::Provider)) { "provider" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
        false,
    )
}

fn room_url(id: &str, party: RoomParty) -> String {
    format!("/demo/rooms/{id}?as={}", party.as_str())
}

fn room_page(session: &Session, party: RoomParty, token: &str) -> Markup {
    let other = party.other();
    layout(
        &format!("Room {}", session.id),
        html! {
            main.page.room #room data-session=(session.id) data-party=(party.as_str()) data-token=(token) {
                h1 { "Room " code { (session.id) } }
                p.lead {
                    "You are the " strong #you { (party.as_str()) } " of this "
                    (session.kind.as_str()) " session. "
                    a #other href=(room_url(&session.id, other)) { "Open it as the " (other.as_str()) }
                    " · "
                    a #dashboard-link href=(format!("/admin/sessions/{}", session.id)) {
                        "the session on the dashboard"
                    }
                }
                section.card {
                    h2 { "Presence" }
                    p #state data-state="connecting" { "Connecting…" }
                    div.lanes {
                        div.lane { span.who { "customer" } div.bar #lane-customer {} span.now #now-customer { "—" } }
                        div.lane { span.who { "provider" } div.bar #lane-provider {} span.now #now-provider { "—" } }
                    }
                    ol #timeline {}
                }
                section.card.controls {
                    button #leave type="button" disabled { "Leave" }
                    " "
                    button #end type="button" disabled { "End session" }
                    p.hint {
                        "Leave steps out (the page rejoins when opened again); End asks verdict to "
                        "decide now. Neither sends a status: verdict decides from presence alone."
                    }
                }
                section.card #decision hidden {
                    h2 { "Decision" }
                    dl {
                        dt { "Status" } dd #decision-status {}
                        dt { "Reason" } dd #decision-reason {}
                        dt { "Billable seconds" } dd #decision-billable {}
                        dt { "Ended by" } dd #decision-ended-by {}
                    }
                }
            }
        },
        true,
    )
}
