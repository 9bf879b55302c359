use super::*;

fn config() -> NetworkConfig {
    NetworkConfig {
        state_dir: PathBuf::from("/run/bramble-test/net"),
        ..NetworkConfig::default()
    }
}

fn rejected_field(config: &NetworkConfig) -> &'static str {
    match validate_config(config) {
        Err(NetworkError::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn default_config_is_valid() {
    let subnet = validate_config(&NetworkConfig::default()).unwrap();
    assert_eq!(
        subnet,
        Subnet {
            addr: Ipv4Addr::new(10, 72, 0, 0),
            prefix_len: 16
        }
    );
    assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 72, 0, 1));
    assert_eq!(subnet.to_string(), "10.72.0.0/16");
}

#[test]
fn bad_subnets_are_rejected() {
    for bad in [
        "",
        "10.72.0.0",
        "10.72.0.0/",
        "10.72.0.0/33",
        "10.72.0.0/+16",
        "10.72.0.0/016",
        "10.72.0.1/16",
        "300.72.0.0/16",
        "10.72.0/16",
        "fd00::/64",
        " 10.72.0.0/16",
    ] {
        let c = NetworkConfig {
            subnet: bad.to_owned(),
            ..config()
        };
        assert_eq!(rejected_field(&c), "subnet", "{bad:?}");
    }
    let host_bits = NetworkConfig {
        subnet: "10.72.0.1/16".to_owned(),
        ..config()
    };
    let e = validate_config(&host_bits).unwrap_err().to_string();
    assert!(e.contains("did you mean 10.72.0.0/16"), "{e}");
}

#[test]
fn prefix_must_leave_room_for_gateway_and_functions() {
    for bad in ["10.0.0.0/7", "0.0.0.0/0", "10.72.0.0/31", "10.72.0.0/32"] {
        let c = NetworkConfig {
            subnet: bad.to_owned(),
            ..config()
        };
        assert_eq!(rejected_field(&c), "subnet", "{bad}");
    }
    for good in ["10.0.0.0/8", "192.168.7.0/24", "10.72.0.4/30"] {
        let c = NetworkConfig {
            subnet: good.to_owned(),
            ..config()
        };
        validate_config(&c).unwrap();
    }
}

#[test]
fn bridge_names_are_linux_interface_names() {
    for bad in [
        "",
        "bramble-bridge-0",
        "br 0",
        "br/0",
        "br:0",
        ".",
        "..",
        "brä",
    ] {
        let c = NetworkConfig {
            bridge: bad.to_owned(),
            ..config()
        };
        assert_eq!(rejected_field(&c), "bridge", "{bad:?}");
    }
    let c = NetworkConfig {
        bridge: "bramble-bridge0".to_owned(),
        ..config()
    }; // 15 bytes
    validate_config(&c).unwrap();
}

#[test]
fn other_fields_are_checked() {
    let c = NetworkConfig {
        name: "-bad".to_owned(),
        ..config()
    };
    assert_eq!(rejected_field(&c), "name");
    let c = NetworkConfig {
        name: "a/b".to_owned(),
        ..config()
    };
    assert_eq!(rejected_field(&c), "name");
    let c = NetworkConfig {
        plugin_dirs: vec![],
        ..config()
    };
    assert_eq!(rejected_field(&c), "plugin_dirs");
    let c = NetworkConfig {
        plugin_dirs: vec![PathBuf::from("cni")],
        ..config()
    };
    assert_eq!(rejected_field(&c), "plugin_dirs");
    let c = NetworkConfig {
        plugin_dirs: vec![PathBuf::from("/opt/a:b")],
        ..config()
    };
    assert_eq!(rejected_field(&c), "plugin_dirs");
    let c = NetworkConfig {
        state_dir: PathBuf::from("run/net"),
        ..config()
    };
    assert_eq!(rejected_field(&c), "state_dir");
}

#[test]
fn new_validates_config_before_looking_for_plugins() {
    let c = NetworkConfig {
        subnet: "nope".to_owned(),
        plugin_dirs: vec![PathBuf::from("/nonexistent")],
        ..config()
    };
    assert!(matches!(
        Network::new(c),
        Err(NetworkError::InvalidConfig {
            field: "subnet",
            ..
        })
    ));
}

#[test]
fn new_lists_missing_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let c = NetworkConfig {
        plugin_dirs: vec![dir.path().to_path_buf()],
        ..config()
    };
    let e = Network::new(c).unwrap_err();
    let NetworkError::MissingPlugins { missing, searched } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(missing, &["bridge", "host-local", "loopback", "firewall"]);
    assert_eq!(searched, &[dir.path().to_path_buf()]);
    assert!(
        e.to_string()
            .ends_with("(install them: apt install containernetworking-plugins)"),
        "{e}"
    );
}

#[test]
fn ids_are_validated() {
    for good in ["a", "0", "fn-hello.v2_x", &"a".repeat(76)] {
        validate_id(good).unwrap();
    }
    for bad in [
        "",
        "-a",
        ".a",
        "_a",
        "a/b",
        "..",
        "a b",
        "a\n",
        "ä",
        &"a".repeat(77),
    ] {
        assert!(
            matches!(validate_id(bad), Err(NetworkError::InvalidId { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn gateway_is_the_first_host() {
    let subnet: Subnet = "192.168.40.0/22".parse().unwrap();
    assert_eq!(subnet.gateway(), Ipv4Addr::new(192, 168, 40, 1));
    assert!(subnet.contains(Ipv4Addr::new(192, 168, 43, 254)));
    assert!(!subnet.contains(Ipv4Addr::new(192, 168, 44, 1)));
}

#[test]
fn plugin_path_adds_sbin() {
    assert_eq!(
        cni::plugin_path_env(None),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(
        cni::plugin_path_env(Some("/home/x/bin:/usr/bin:/bin")),
        "/home/x/bin:/usr/bin:/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin"
    );
}

#[tokio::test]
async fn id_locks_serialise_and_are_forgotten() {
    let locks = Arc::new(IdLocks::default());
    let first = locks.lock("a").await;
    let other = locks.lock("b").await; // a different id does not wait
    drop(other);
    assert_eq!(locks.len(), 1);

    let waiter = {
        let locks = Arc::clone(&locks);
        tokio::spawn(async move {
            let _g = locks.lock("a").await;
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "same id must wait");
    drop(first);
    waiter.await.unwrap();
    assert_eq!(locks.len(), 0);
}

#[tokio::test]
async fn attach_and_detach_reject_bad_ids_before_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    for plugin in cni::PLUGIN_NAMES {
        let path = dir.path().join(plugin);
        std::fs::write(&path, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let state = dir.path().join("state");
    let network = Network::new(NetworkConfig {
        plugin_dirs: vec![dir.path().to_path_buf()],
        state_dir: state.clone(),
        ..config()
    })
    .unwrap();
    assert!(matches!(
        network.attach("../etc").await,
        Err(NetworkError::InvalidId { .. })
    ));
    assert!(matches!(
        network.detach("a/b").await,
        Err(NetworkError::InvalidId { .. })
    ));
    assert!(!state.exists());
    assert!(network.attachments().unwrap().is_empty());
    // Unknown id: nothing to do.
    network.detach("unknown").await.unwrap();
    assert_eq!(network.gateway(), Ipv4Addr::new(10, 72, 0, 1));
}

mod properties {
    use proptest::prelude::*;

    use super::super::config::{Subnet, parse_cidr};

    proptest! {
        #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.max(512), failure_persistence: None, ..ProptestConfig::default() })]

        /// The `network.subnet` setting: any text is a clear error or a subnet that prints back
        /// to itself; a CIDR with host bits set is refused with the network it meant.
        #[test]
        fn subnets_never_panic_and_round_trip(
            text in prop_oneof![".{0,30}", "[0-9]{1,4}(\\.[0-9]{1,4}){0,4}(/[0-9]{0,3})?"],
            addr in any::<u32>(),
            prefix in 0u8..40,
        ) {
            for text in [text, format!("{}/{prefix}", std::net::Ipv4Addr::from(addr))] {
                match text.parse::<Subnet>() {
                    Ok(subnet) => {
                        prop_assert_eq!(subnet.to_string().parse::<Subnet>().unwrap(), subnet);
                        prop_assert!((8..=30).contains(&subnet.prefix_len));
                    }
                    Err(e) => {
                        prop_assert!(e.contains(&text) || e.contains(&format!("{text:?}")), "{}", e);
                        prop_assert!(parse_cidr(&text).is_none_or(|(_, p)| p <= 32));
                    }
                }
            }
        }
    }
}
