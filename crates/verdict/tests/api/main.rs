//! Black-box HTTP tests: the real application, real HTTP, a fresh database
//! per test, time moved by the manual test clock (never by sleeping).

mod browser;
mod support;

mod admin_runs;
mod cli;
mod concurrency;
mod cors;
mod crash;
mod cross_instance;
mod dashboard;
mod decisions;
mod delivery;
mod demo;
mod demo_room;
mod fakes;
mod healthcheck;
mod help;
mod history;
mod insight;
mod layout;
mod limits;
mod metrics;
mod monitoring;
mod observability;
mod payout_faults;
mod presence;
mod presence_source;
mod redaction;
mod rejections;
mod repair;
mod reversals;
mod scale_out;
mod secrets;
mod security;
mod settlement;
mod simulate;
mod sweeper;
mod tls;
mod verification;
mod webhooks;
