//! bramble-cluster: several boards, one bramble, on NATS JetStream (issue 15).
//!
//! The **engine layer** (running nats-server, the cluster's identity, KV with compare-and-set,
//! membership, a lease, the durable call queue, changing the JetStream layout as boards come
//! and go), the **node side** ([`node`]: a board's cluster files, init, the join handshake,
//! leave/remove, status, the placer at work and the board's part of the plan), the cluster's
//! **desired state** ([`desired`]), **placement** ([`placement`]), the board's **reconciler**
//! ([`reconcile`]) and the gateway's **provider** of a board in a cluster ([`provider`]). A
//! single board without a cluster runs none of it: its [`provider::ClusterProvider`] passes
//! every call to the board's own provider.
//!
//! # Modules
//!
//! | module | what | main items |
//! |---|---|---|
//! | [`desired`] | functions, namespaces and secrets of the whole cluster (issue 15 step 2) | [`desired::DesiredStore`] (`open`, `deploy`, `update`, `scale`, `delete`, namespaces, `put_secret`, `delete_secret`, `open_secret`, `snapshot`), [`desired::Mirror`] (`wait_for`), [`desired::Desired`], [`desired::DesiredError`] |
//! | [`engine`] | the nats-server a board runs and supervises | [`engine::EngineConfig`], [`engine::NatsServer`] (`start`, `wait_jetstream`, `connect`, `connect_system`, `restart_with`, `reload_routes`, `stop`, `rss`, `version`, `fsync_before_ack`, `state`), [`engine::Monitor`] |
//! | [`identity`] | cluster name, secret, CA, board certificates and users, join tokens, sealing | [`identity::ClusterIdentity`] (`init`, `join_token`, `check_token`, `issue_board`, `save`/`load`), [`identity::BoardIdentity`], [`identity::JoinToken`], [`identity::SealKey`] |
//! | [`kv`] | KV buckets made without the client's KV API; typed errors | [`kv::Bucket`] (`open_or_create`, `get`, `entry`, `entry_from_leader`, `create`, `update`, `put`, `delete`, `delete_if`, `keys`, `watch_all`, `ensure_replicas`), [`kv::follow`], [`kv::CasMode`], [`kv::KvError`] |
//! | [`membership`] | board records in KV, liveness by heartbeats | [`membership::Membership`] (`start`, `watch`, `update`, `forget`), [`membership::BoardInfo`], [`membership::View`], [`membership::BoardState`] |
//! | [`lease`] | one actor at a time (the placer) | [`lease::Lease`] (`start`, `watch`, `is_holder`), [`lease::LeaseStatus`] |
//! | [`queue`] | the `CALLS` work queue | [`queue::CallQueue`] (`open_or_create`, `enqueue`, `worker`, `pending`, `durability`), [`queue::Worker`], [`queue::Call`] (`done`, `in_progress`, `retry`), [`queue::Durability`] |
//! | [`layout`] | replicas, placement, peer removal | [`layout::ensure_stream_replicas`], [`layout::wait_stream_replicas`], [`layout::stream_placement`], [`layout::remove_peer`] |
//! | [`migrate`] | standalone → clustered without losing data | [`migrate::migrate_standalone_to_clustered`], [`migrate::finish_pending_migration`], [`migrate::export`], [`migrate::import`] |
//! | [`placement`] | which boards run which replicas: pure, deterministic | [`placement::place`], [`placement::admit`], [`placement::parse_constraints`], [`placement::Plan`] (`for_board`, `find`), [`placement::PlacementInput`], [`placement::Board`], [`placement::Function`], [`placement::UnplacedReason`] |
//! | [`names`] | the names that go into subjects, server names and files | [`names::validate`] |
//! | [`node`] | what `bramble up` runs in a cluster: files, init, join (both sides), layout, leave/remove, status, the placer at work ([`node::placer`]), the board's part of the plan ([`node::runner`]) | [`node::ClusterNode`] (`start`, `ready`, `run_board`, `view`, `stop`), [`node::Parts`] |
//! | [`provider`] | the gateway's `Provider` of a board that may be in a cluster; where invocations go ([`provider::routes`]); a board's own functions taken into the cluster ([`provider::import`]) | [`provider::ClusterProvider`] (`new`, `attach`, `import`), [`provider::DeploymentCheck`], [`provider::routes::Routes`] |
//! | [`function_key`] | the key of a function everywhere in the crate | [`function_key::FunctionKey`] |
//! | [`reconcile`] | a board runs what the cluster assigned to it, through its own provider | [`reconcile::reconcile`], [`reconcile::Target`], [`reconcile::Report`] |
//!
//! # A board, start to finish (what the agent will do)
//!
//! 1. `bramble cluster init`: [`identity::ClusterIdentity::init`], then
//!    [`identity::ClusterIdentity::issue_board`] for itself; both saved root-only under
//!    `<state_dir>/cluster/`; [`identity::BoardIdentity::write_tls_files`] for nats-server.
//!    The join token ([`identity::ClusterIdentity::join_token`]) is printed.
//! 2. `bramble up`: an [`engine::EngineConfig`] from the identity (routes: every
//!    **JetStream** board, itself included — see the findings), [`engine::NatsServer::start`],
//!    [`engine::NatsServer::wait_jetstream`], [`engine::NatsServer::connect`],
//!    [`migrate::finish_pending_migration`] (an interrupted growth), then the buckets
//!    (`boards`, `leases`, the desired state, secrets) with [`kv::Bucket::open_or_create`] and
//!    `CasMode::for_versions` of the JetStream boards, the queue with
//!    [`queue::CallQueue::open_or_create`] and `Durability::of_cluster`.
//! 3. [`membership::Membership::start`] with its [`membership::BoardInfo`];
//!    [`lease::Lease::start`] for `placer`; act only while [`lease::LeaseStatus::is_holder`].
//! 4. Growth: the first board runs standalone JetStream; when a second JetStream board joins,
//!    [`migrate::migrate_standalone_to_clustered`]; with 2 and 3 JetStream boards,
//!    [`kv::Bucket::ensure_replicas`] / [`layout::ensure_stream_replicas`] to 2, then 3.
//!    Further boards join with JetStream off (routes to the JetStream boards). Shrinking:
//!    promote a board ([`engine::NatsServer::restart_with`] JetStream on), stop the leaving
//!    one, [`layout::remove_peer`] (system account), [`engine::NatsServer::reload_routes`] on
//!    the others.
//!
//! # What was found (nats-server 2.9.10 of Debian 12 and 2.10.27 of Debian 13)
//!
//! All of these are exercised by `tests/it` on both versions (`cluster/scripts/test`).
//!
//! - **A lone clustered server never has JetStream.** With a `cluster` block and no peer state,
//!   the meta group expects max(2, number of routes) peers (`bootstrapRaftNode`,
//!   server/raft.go), so one server — even with routes to absent boards — has no meta leader
//!   (`/jsz` cluster_size 2) and refuses every JetStream request; the first R1 write succeeds
//!   0.7–0.9 s after a second JetStream board starts. A one-board cluster therefore runs
//!   standalone JetStream, and the first growth is a migration (below). Routes also count
//!   toward that bootstrap size (a route to the server itself too, though it is not dialled),
//!   so a JetStream board's routes must be exactly the JetStream boards, itself included:
//!   4 routes (2 to absent or non-JetStream boards) kept 2 live JetStream boards without a
//!   leader; routes to the others only (a bootstrap size of 2 in a 3-board cluster) let two
//!   boards form the group and the third sometimes not join within a minute (2.10.27).
//! - **Standalone streams stay invisible after a clustered restart** (both versions: "stream
//!   not found"); recreating the bucket of the same name sometimes picks up the old files on
//!   that board only (both versions), so its replicas disagree.
//!   [`migrate`] exports, moves the old `jetstream` directory aside and imports: 20 keys and
//!   10 queued calls, nothing lost or repeated, 0.4–0.7 s without a server.
//! - **Compare-and-set on 2.9.10 clusters:** per-key expected revisions are checked only by
//!   the stream leader before proposing; racing updates both won in 17–29 of 50 rounds (0 on
//!   2.10.27). Default [`kv::CasMode::BucketWide`] is exact on both (checked when applied).
//!   Creates (expected revision 0) are exact on both.
//! - **async-nats 0.52 against these servers:** `create_key_value` fails (2.11 account
//!   fields); `watch_all` delivers only new changes (`watch_with_history` gives current
//!   values); on 2.10.27, right after a replica change, a new consumer can be told too few
//!   values are pending and `keys()` returns a partial or empty list (checked against the
//!   stream's subject count here); a watch whose consumer died with its stream leader stayed
//!   silent up to a minute on 2.9.10 (re-established here on the leader advisory, a silent
//!   watch's check against the leader, and a 3 s consumer-creation timeout: caught up 0.1–9 s
//!   after writes resumed).
//! - **Reads are not linearizable.** Direct gets are answered by any replica, and a watch's
//!   or listing's consumer can sit on a replica that is behind: right after a peer removal
//!   moved a stream to a new board, a listing through that board still showed a deleted key
//!   (2.10.27, once in ~10 runs; right again within a second). Decisions go through
//!   compare-and-set; [`kv::Bucket::entry_from_leader`] reads from the stream leader.
//! - **`sync_interval`** exists from 2.10 only; 2.9.10 refuses the key ("unknown field", the
//!   server does not start), so the engine writes it only where it exists.
//!   [`engine::NatsServer::fsync_before_ack`] / [`queue::Durability`] tell callers whether
//!   JetStream fsyncs before acknowledging (only 2.10+ with `sync_interval: always` on every
//!   JetStream board). Its cost here: R1 put p50 0.13 → 0.46 ms, R3 put p50 0.89 → 3.2 ms.
//! - **Partitions:** a board cut off from the majority gets `Timeout` for the first ~6 s,
//!   then `NoQuorum` (its routes are closed as stale: `ping_interval 2s`, `ping_max 3` —
//!   with the defaults they stay open for minutes and what was published into them is
//!   delivered after the heal); if it holds a replica of the bucket it keeps timing out. A
//!   write that timed out can still be applied after the heal (seen on 2.9.10 when the cut
//!   board led the stream): callers must treat `Timeout` as "maybe". The majority writes again
//!   at once, or after ~6 s when the cut board led the stream; the minority writes again
//!   1–10 s after the heal (direct reads are stale for a moment).
//! - **Routes between boards without JetStream** are discovered: such a board's routes name
//!   only the JetStream boards, which tell it of the others. nats-server tries a discovered
//!   route once by default, and only one of the two boards tries; NATS forwards a message one
//!   hop, so after one failed attempt the two never heard each other again. bramble sets
//!   `connect_retries: 60` (once a second): the route then forms about 1 s after the link is
//!   back (both versions).
//! - **Failover:** KV writes stop 4–7 s after SIGKILL of the stream leader (both versions);
//!   a consumer's leader dying can reset a call's delivery count (2.10.27).
//! - **Right after a cluster forms** the meta leader can answer "no suitable peers" for a
//!   moment (2.10.27): stream creation and replica changes retry for 5 s.
//! - **Peer removal** (`$JS.API.SERVER.REMOVE`, system account) works on both: with a spare
//!   JetStream board (promoted first), every R3 stream was back to 3 current replicas 1–2 s
//!   after removing the dead peer; a second removal of the same peer is refused.
//! - **Replica changes in place** (R1→R2→R3→R1→R3) work on both, 0.02–2 s for 50 keys.
//! - **RSS** (GOMEMLIMIT 48 MiB, idle): 2.9.10 standalone 12 MiB, clustered JetStream board
//!   14.5 MiB, member without JetStream 13.6–14 MiB, ~21 MiB after 1000s of R3 puts; 2.10.27
//!   14.5 / 19 / 18 / ~25 MiB.
//! - **Membership** saw a SIGKILLed board suspect after ~2.2 s and dead after ~9–9.2 s
//!   (heartbeat 1 s, dead_after 10 s; the last heartbeat precedes the kill by up to 1 s); the
//!   lease moved once, 10.0 s after its holder's power cut.

pub mod desired;
pub mod engine;
#[cfg(test)]
mod fixtures;
pub mod function_key;
pub mod identity;
mod jserr;
pub mod kv;
pub mod layout;
pub mod lease;
pub mod membership;
pub mod migrate;
pub mod names;
pub mod node;
pub mod placement;
pub mod provider;
pub mod queue;
pub mod reconcile;
pub mod settings;

pub use settings::ClusterConfig;
