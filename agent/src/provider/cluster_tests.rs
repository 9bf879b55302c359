//! The cluster's reconciler ([`bramble_cluster::reconcile`]) driving this provider, over the
//! scripted runtime on tokio's paused clock: what a board does with its part of the cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use bramble_cluster::placement::IMPORTED_FROM;
use bramble_cluster::reconcile::{
    Action, Assigned, FunctionKey, Memory, SPEC_ANNOTATION, SecretKey, SecretValue, Subject,
    Target, reconcile, spec_digest,
};
use bramble_gateway::provider::Provider;
use bramble_gateway::types::FunctionNamespace;

use super::tests::{bench, deployment};
use crate::runtime::fake::{Call, Script};

const IMAGE: &str = "docker.io/library/img:latest";

fn key(namespace: &str, name: &str) -> FunctionKey {
    FunctionKey::of(namespace, name)
}

fn secret(namespace: &str, name: &str) -> SecretKey {
    SecretKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// A target of one function `f` in namespace `shelf` using secret `token`.
fn target(replicas: u64) -> Target {
    let mut f = deployment("f", "img");
    f.namespace = Some("shelf".into());
    f.secrets = vec!["token".into()];
    f.env_vars = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
    Target {
        namespaces: BTreeMap::from([(
            "shelf".to_owned(),
            FunctionNamespace {
                name: "shelf".into(),
                ..FunctionNamespace::default()
            },
        )]),
        functions: BTreeMap::from([(
            key("shelf", "f"),
            Assigned {
                deployment: f,
                replicas,
            },
        )]),
        secrets: BTreeMap::from([(
            secret("shelf", "token"),
            SecretValue {
                revision: 7,
                value: b"s3cret".to_vec(),
            },
        )]),
        known_secrets: std::collections::BTreeSet::from([secret("shelf", "token")]),
    }
}

#[tokio::test(start_paused = true)]
async fn a_board_runs_its_part_and_a_second_pass_changes_nothing() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    b.fake
        .script(IMAGE, Script::ready_after(Duration::from_millis(20)));
    let mut memory = Memory::default();
    let report = reconcile(&*b.provider, &target(2), &mut memory).await;
    assert!(report.converged(), "{:?}", report.failed);
    assert_eq!(
        report.actions,
        [
            Action::CreatedNamespace("shelf".into()),
            Action::WroteSecret(secret("shelf", "token")),
            Action::Deployed(key("shelf", "f")),
            Action::Scaled(key("shelf", "f"), 2),
        ]
    );
    let f = b
        .provider
        .get_function("f", "shelf", false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.replicas, 2);
    assert!(f.annotations.contains_key(SPEC_ANNOTATION));
    assert_eq!(b.provider.list_secrets("shelf").await.unwrap().len(), 1);
    let again = reconcile(&*b.provider, &target(2), &mut memory).await;
    assert!(again.converged() && again.actions.is_empty(), "{again:?}");
    // The board scales it to zero by itself (idle): the cluster's count, unchanged, is not
    // applied again; a new count is.
    b.provider.scale("f", "shelf", 0).await.unwrap();
    let idle = reconcile(&*b.provider, &target(2), &mut memory).await;
    assert!(idle.actions.is_empty(), "{idle:?}");
    let report = reconcile(&*b.provider, &target(3), &mut memory).await;
    assert_eq!(report.actions, [Action::Scaled(key("shelf", "f"), 3)]);
}

#[tokio::test(start_paused = true)]
async fn a_scale_is_not_a_rollout_and_a_changed_spec_is() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    b.fake
        .script(IMAGE, Script::ready_after(Duration::from_millis(20)));
    let mut memory = Memory::default();
    reconcile(&*b.provider, &target(1), &mut memory).await;
    b.provider
        .endpoint("f", "shelf", Duration::from_secs(5))
        .await
        .unwrap();
    // Containers created for `f` so far: a rollout creates the new version's.
    let created = || {
        b.fake
            .calls()
            .into_iter()
            .filter(|(_, c)| matches!(c, Call::Create(id) if id.starts_with("f.")))
            .count()
    };
    let before = created();
    // To zero: this board stays the function's home, nothing is rolled out.
    let report = reconcile(&*b.provider, &target(0), &mut memory).await;
    assert_eq!(report.actions, [Action::Scaled(key("shelf", "f"), 0)]);
    assert_eq!(created(), before);
    // A changed environment is an update (a rollout), once.
    let mut changed = target(1);
    if let Some(f) = changed.functions.get_mut(&key("shelf", "f")) {
        f.deployment.env_vars.insert("A".into(), "2".into());
    }
    let report = reconcile(&*b.provider, &changed, &mut memory).await;
    assert_eq!(
        report.actions,
        [
            Action::Updated(key("shelf", "f")),
            Action::Scaled(key("shelf", "f"), 1)
        ]
    );
    b.provider
        .endpoint("f", "shelf", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(created() > before, "no new version was started");
    let again = reconcile(&*b.provider, &changed, &mut memory).await;
    assert!(again.actions.is_empty(), "{again:?}");
    // A new revision of the secret is written once.
    changed.secrets.insert(
        secret("shelf", "token"),
        SecretValue {
            revision: 8,
            value: b"rotated".to_vec(),
        },
    );
    let report = reconcile(&*b.provider, &changed, &mut memory).await;
    assert_eq!(
        report.actions,
        [Action::WroteSecret(secret("shelf", "token"))]
    );
}

#[tokio::test(start_paused = true)]
async fn what_the_cluster_takes_away_is_deleted_and_a_hand_deployed_function_is_left_alone() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    b.fake
        .script(IMAGE, Script::ready_after(Duration::from_millis(20)));
    // Deployed on the board before it joined.
    b.provider.deploy(deployment("mine", "img")).await.unwrap();
    let mut memory = Memory::default();
    let report = reconcile(&*b.provider, &target(1), &mut memory).await;
    assert_eq!(report.unmanaged, [key("openfaas-fn", "mine")]);
    let report = reconcile(&*b.provider, &Target::default(), &mut memory).await;
    assert_eq!(
        report.actions,
        [
            Action::Deleted(key("shelf", "f")),
            Action::RemovedSecret(secret("shelf", "token"))
        ]
    );
    assert_eq!(report.unmanaged, [key("openfaas-fn", "mine")]);
    assert!(
        b.provider
            .get_function("f", "shelf", false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.provider
            .get_function("mine", "openfaas-fn", false)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_the_board_refuses_is_reported_and_the_others_still_happen() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    b.fake
        .script(IMAGE, Script::ready_after(Duration::from_millis(20)));
    let mut wanted = target(1);
    // More than the board's 512 MiB budget.
    let mut big = deployment("big", "img");
    big.namespace = Some("shelf".into());
    big.limits = Some(bramble_gateway::types::FunctionResources {
        memory: Some("1Gi".into()),
        cpu: None,
    });
    wanted.functions.insert(
        key("shelf", "big"),
        Assigned {
            deployment: big,
            replicas: 1,
        },
    );
    let mut memory = Memory::default();
    let report = reconcile(&*b.provider, &wanted, &mut memory).await;
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].0, Subject::Function(key("shelf", "big")));
    assert!(
        report.failed[0].1.to_string().contains("needs 1024 MiB"),
        "{}",
        report.failed[0].1
    );
    assert!(
        report
            .actions
            .contains(&Action::Deployed(key("shelf", "f")))
    );
}

#[tokio::test(start_paused = true)]
async fn a_secret_goes_from_a_board_once_no_function_there_uses_it() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    b.fake
        .script(IMAGE, Script::ready_after(Duration::from_millis(20)));
    let put = |name: &str| bramble_gateway::types::Secret {
        name: name.into(),
        namespace: Some("shelf".into()),
        value: Some("v".into()),
        raw_value: None,
    };
    let names = async || {
        let mut names: Vec<String> = b
            .provider
            .list_secrets("shelf")
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        names.sort();
        names
    };
    let known =
        std::collections::BTreeSet::from([secret("shelf", "token"), secret("shelf", "shared")]);
    let mut memory = Memory::default();
    let mut here = target(1);
    here.known_secrets = known.clone();
    reconcile(&*b.provider, &here, &mut memory).await;
    // Made on the board by hand: one under a name the cluster does not know, and one it knows
    // that a function deployed by hand uses.
    b.provider.put_secret(put("mine")).await.unwrap();
    b.provider.put_secret(put("shared")).await.unwrap();
    let mut g = deployment("g", "img");
    g.namespace = Some("shelf".into());
    g.secrets = vec!["shared".into()];
    b.provider.deploy(g).await.unwrap();
    assert_eq!(names().await, ["mine", "shared", "token"]);

    // `f` moves to another board: its secret goes with it, after the function.
    let mut away = target(1);
    away.functions.clear();
    away.secrets.clear();
    away.known_secrets = known.clone();
    let report = reconcile(&*b.provider, &away, &mut memory).await;
    assert!(report.converged(), "{:?}", report.failed);
    assert_eq!(
        report.actions,
        [
            Action::Deleted(key("shelf", "f")),
            Action::RemovedSecret(secret("shelf", "token"))
        ]
    );
    assert_eq!(names().await, ["mine", "shared"]);

    // Back here, then the cluster deletes the secret (it no longer knows it) and the
    // function: this process wrote it, so it goes too.
    reconcile(&*b.provider, &here, &mut memory).await;
    assert_eq!(names().await, ["mine", "shared", "token"]);
    away.known_secrets.remove(&secret("shelf", "token"));
    let report = reconcile(&*b.provider, &away, &mut memory).await;
    assert!(
        report
            .actions
            .contains(&Action::RemovedSecret(secret("shelf", "token"))),
        "{:?}",
        report.actions
    );
    assert_eq!(names().await, ["mine", "shared"]);
    let again = reconcile(&*b.provider, &away, &mut memory).await;
    assert!(again.actions.is_empty(), "{:?}", again.actions);
}

/// A function deployed on the board before it joined is held (left alone, the pass not done)
/// while the cluster gives the board a function of that name; once the board handed it to the
/// cluster and marked it (`cluster::import`), the reconciler runs it as the cluster's: nothing
/// is deployed, rolled out or restarted.
#[tokio::test(start_paused = true)]
async fn a_function_the_board_hands_to_the_cluster_is_taken_over_without_a_restart() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    b.fake
        .script(IMAGE, Script::ready_after(Duration::from_millis(20)));
    b.provider.deploy(deployment("mine", "img")).await.unwrap();
    b.provider
        .endpoint("mine", "openfaas-fn", Duration::from_secs(5))
        .await
        .unwrap();
    let creates = || {
        b.fake
            .calls()
            .into_iter()
            .filter(|(_, c)| matches!(c, Call::Create(_)))
            .count()
    };
    let before = creates();
    assert_eq!(before, 1);
    let store = &b.provider.ctx.store;
    let own = crate::cluster::import::own_state(store).await.unwrap();
    assert_eq!(own.functions.len(), 1, "{own:?}");
    // What the cluster stores: the board's deployment, marked as imported from it.
    let (mut stored, replicas) = own.functions[0].clone();
    stored
        .annotations
        .insert(IMPORTED_FROM.to_owned(), "b0".to_owned());
    let mine = key("openfaas-fn", "mine");
    let target = Target {
        functions: BTreeMap::from([(
            mine.clone(),
            Assigned {
                deployment: stored.clone(),
                replicas,
            },
        )]),
        ..Target::default()
    };
    let mut memory = Memory::default();
    let report = reconcile(&*b.provider, &target, &mut memory).await;
    assert_eq!(report.held, std::slice::from_ref(&mine));
    assert!(
        !report.converged() && report.actions.is_empty(),
        "{report:?}"
    );

    crate::cluster::import::mark(store, &[(mine.clone(), spec_digest(&stored))])
        .await
        .unwrap();
    let report = reconcile(&*b.provider, &target, &mut memory).await;
    assert!(report.converged(), "{report:?}");
    assert!(report.actions.is_empty(), "{report:?}");
    assert_eq!(creates(), before, "the function was started again");
    // Nothing of the board's own is left to hand over.
    let own = crate::cluster::import::own_state(store).await.unwrap();
    assert!(own.functions.is_empty(), "{own:?}");
    // The cluster takes it away: deleted like any function of the cluster's.
    let report = reconcile(&*b.provider, &Target::default(), &mut memory).await;
    assert_eq!(report.actions, [Action::Deleted(mine)]);
}
