//! A store of items (an axum app) whose data survive every restart: no write the old process
//! answered `201 Created` is lost. The store is handed to the next process twice
//! (`GenerationBuilder::hand_state`): a snapshot when the restart begins, which the new
//! process loads before it serves, and the final state once the old process has drained
//! (its last acknowledged write included), which the new process merges.
//!
//! ```sh
//! cargo run -p gracehttp --features axum --example store -- 127.0.0.1:3000
//! curl -d hello http://127.0.0.1:3000/items       # {"id":4294967296}
//! curl http://127.0.0.1:3000/items/4294967296     # hello
//! curl http://127.0.0.1:3000/items                # {"count":1,"pid":4242}
//! kill -USR2 4242                                 # restart: every item stays
//! ```
//!
//! Ids are unique across processes without asking the old one: an id is the generation's
//! number (one more at each restart, `GRACE_GENERATION`) times 2^32 plus a counter of that
//! generation, so the old and the new process, which write at the same time during a
//! restart, never pick the same id. A `GET` for an id the new process does not have yet
//! waits (at most the old process's drain and hand-over) for the final state before it
//! answers 404: the item may be one the old process wrote after its snapshot.
//!
//! The state is versioned (`gracenet::state`): a program that reads another version refuses
//! it, and the restart rolls back (the old process keeps serving). `STORE_STATE_VERSION`
//! sets the version this process writes and reads (default 1), to try that.
//!
//! The store holds at most 128 MiB of items, as handed over (`STORE_MAX_MIB` sets it): past
//! it a write gets `507 Insufficient Storage`. A larger state could not be handed over (the
//! hand-over's default limit, `GenerationBuilder::max_state`, is 256 MiB, and the snapshot
//! and the final state are both in flight at a restart): every restart would fail, and the
//! process could never be replaced without losing its items.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::{Mutex, watch};

/// How long a `GET` for an unknown id may wait for the old process's final state; past it,
/// 404 (the old process's stop timeout and ready timeout, gracenet's defaults, bound it).
const MERGE_WAIT: Duration = Duration::from_secs(90);

/// What is handed over: every item, by id.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Items {
    items: BTreeMap<u64, String>,
    /// The items' size as handed over (JSON), counted again after each load and merge (not
    /// handed over itself).
    #[serde(skip)]
    bytes: u64,
}

impl Items {
    fn count_bytes(&mut self) {
        self.bytes = self.items.values().map(|v| handed_size(v)).sum();
    }
}

/// An item's size in the handed-over state: its text as a JSON string (a quote or backslash
/// takes 2 bytes, another control character up to 6) and its id and punctuation.
fn handed_size(item: &str) -> u64 {
    let text: u64 = item
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum();
    text + 32
}

#[derive(Clone)]
struct App {
    items: Arc<Mutex<Items>>,
    /// The next id of this generation's own id space.
    next: Arc<std::sync::atomic::AtomicU64>,
    /// `true` once the old process's final state is merged (or will not come).
    merged: watch::Receiver<bool>,
    /// The most bytes of items the store holds.
    max_bytes: u64,
}

async fn post(State(app): State<App>, body: String) -> (StatusCode, String) {
    let mut items = app.items.lock().await;
    let size = handed_size(&body);
    if items.bytes + size > app.max_bytes {
        return (
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the store is full ({} MiB): a larger one could not be handed to the next process\n",
                app.max_bytes >> 20
            ),
        );
    }
    let id = app.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    items.bytes += size;
    items.items.insert(id, body);
    // Answered once the item is in the store: the final state taken after the drain has it.
    (StatusCode::CREATED, format!("{{\"id\":{id}}}"))
}

async fn get_one(State(app): State<App>, Path(id): Path<u64>) -> (StatusCode, String) {
    let mut merged = app.merged.clone();
    for _ in 0..2 {
        if let Some(body) = app.items.lock().await.items.get(&id) {
            return (StatusCode::OK, body.clone());
        }
        // Perhaps written by the old process after its snapshot: wait for its final state.
        if *merged.borrow() {
            break;
        }
        let _ = tokio::time::timeout(MERGE_WAIT, merged.wait_for(|m| *m)).await;
    }
    (StatusCode::NOT_FOUND, format!("no item {id}\n"))
}

async fn count(State(app): State<App>) -> String {
    let n = app.items.lock().await.items.len();
    format!("{{\"count\":{n},\"pid\":{}}}", std::process::id())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The inherited environment first, while this is the only thread.
    gracenet::registry()?;
    tracing_subscriber::fmt().with_target(false).without_time().init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let version: u32 = match std::env::var("STORE_STATE_VERSION") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("STORE_STATE_VERSION={v:?} is not a number"))?,
        Err(_) => 1,
    };
    let max_bytes: u64 = match std::env::var("STORE_MAX_MIB") {
        Ok(v) => v
            .parse::<u64>()
            .ok()
            .and_then(|mib| mib.checked_mul(1 << 20))
            .ok_or_else(|| format!("STORE_MAX_MIB={v:?} is not a number of MiB"))?,
        Err(_) => 128 << 20,
    };
    tokio::runtime::Runtime::new()?.block_on(async move {
        let items = Arc::new(Mutex::new(Items::default()));
        let handed = items.clone();
        let generation = gracenet::Generation::builder()
            .announce(false)
            // Called at the restart (the snapshot) and after the drain (the final state).
            .hand_state(move || {
                let items = handed.clone();
                async move {
                    let items = items.lock().await;
                    match gracenet::state::encode(version, &*items) {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot hand the store over");
                            Vec::new()
                        }
                    }
                }
            })
            .start()?;
        let merged = match generation.inherited_state().await? {
            None => watch::channel(true).1,
            Some(mut inherited) => {
                let snapshot = std::mem::take(&mut inherited.snapshot);
                match gracenet::state::decode::<Items>(version, &snapshot) {
                    Ok(mut loaded) => {
                        loaded.count_bytes();
                        *items.lock().await = loaded;
                    }
                    Err(e) => {
                        // The old process keeps serving, with all its items.
                        generation.refuse(&e.to_string());
                        return Err(e.into());
                    }
                }
                let (merged_tx, merged) = watch::channel(false);
                let items = items.clone();
                tokio::spawn(async move {
                    // Once the old process has drained: its last writes. Held until merged:
                    // this process hands its own final state after that, so a restart soon
                    // after this one hands these items on too.
                    match inherited.final_state().await {
                        Ok(last) => match gracenet::state::decode::<Items>(version, &last) {
                            Ok(last) => {
                                let mut items = items.lock().await;
                                let before = items.items.len();
                                items.items.extend(last.items);
                                items.count_bytes();
                                println!(
                                    "merged the final state: {} item(s) written after the snapshot (pid {})",
                                    items.items.len() - before,
                                    std::process::id()
                                );
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "the old process's last writes are not here")
                            }
                        },
                        Err(e) => tracing::error!(error = %e, "the old process's last writes are not here"),
                    }
                    merged_tx.send_replace(true);
                });
                merged
            }
        };
        let app = App {
            items,
            next: Arc::new((generation.number() << 32).into()),
            merged,
            max_bytes,
        };
        let router = Router::new()
            .route("/items", get(count).post(post))
            .route("/items/{id}", get(get_one))
            .with_state(app);
        gracehttp::Server::new()
            .generation(generation)
            .http(&addr, router)
            .on_listening(|sites| println!("store on {} (pid {})", sites[0].addr, std::process::id()))
            .run()
            .await?;
        Ok(())
    })
}
