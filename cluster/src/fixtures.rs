//! Records for unit tests: functions, boards, plans.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use bramble_gateway::types::FunctionDeployment;

use crate::desired::{FunctionKey, FunctionRecord, Stamp};
use crate::membership::{BoardInfo, BoardState, BoardView, MemoryBudget, View};
use crate::placement::FunctionPlan;

pub(crate) fn key(name: &str) -> FunctionKey {
    FunctionKey::of("openfaas-fn", name)
}

pub(crate) fn record(replicas: u64, secrets: &[&str]) -> FunctionRecord {
    let stamp = Stamp {
        board: "b0".into(),
        at_ms: 1_700_000_000_000,
    };
    FunctionRecord {
        deployment: FunctionDeployment {
            service: "f".into(),
            image: "docker.io/library/hello:latest".into(),
            namespace: Some("openfaas-fn".into()),
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            ..FunctionDeployment::default()
        },
        replicas,
        generation: 1,
        created: stamp.clone(),
        changed: stamp,
    }
}

/// A board's record: arm64, 512 MiB budget with 64 MiB used, JetStream.
pub(crate) fn info(name: &str) -> BoardInfo {
    BoardInfo {
        name: name.into(),
        address: IpAddr::from([10, 0, 0, 1]),
        arch: "arm64".into(),
        version: "0.1.0".into(),
        nats_version: "2.9.10".into(),
        memory: MemoryBudget {
            total: 512 << 20,
            used: 64 << 20,
        },
        functions: 1,
        hardware: Default::default(),
        labels: BTreeMap::new(),
        started_at_ms: 1,
        jetstream: true,
        platform: "linux/arm64".into(),
        api_port: 8080,
        board_port: 8443,
        route_port: 7424,
        leaving: false,
        ready: BTreeMap::new(),
        outside: Default::default(),
    }
}

pub(crate) fn board(name: &str, state: BoardState, ready: &[(&str, u64)]) -> (String, BoardView) {
    let info = BoardInfo {
        ready: ready.iter().map(|(f, n)| ((*f).to_owned(), *n)).collect(),
        ..info(name)
    };
    (
        name.to_owned(),
        BoardView {
            info: Some(info),
            state,
            last_seen: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5)),
        },
    )
}

pub(crate) fn view(boards: Vec<(String, BoardView)>) -> View {
    View {
        boards: boards.into_iter().collect(),
        records_loaded: true,
    }
}

pub(crate) fn placed(name: &str, boards: &[(&str, u32)], home: &str) -> FunctionPlan {
    FunctionPlan {
        key: key(name),
        replicas: boards.iter().map(|(_, n)| n).sum(),
        boards: boards.iter().map(|(b, n)| ((*b).to_owned(), *n)).collect(),
        home: home.into(),
        short: None,
    }
}
