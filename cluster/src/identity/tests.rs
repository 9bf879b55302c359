use std::net::{IpAddr, Ipv4Addr};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::*;

fn verify_chain(
    ca_pem: &str,
    cert_pem: &str,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&ca)?;
    let ee = webpki::EndEntityCert::try_from(&cert)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

#[test]
fn board_certificate_chains_to_the_cluster_ca_for_both_directions() {
    let cluster = ClusterIdentity::init("shelf").unwrap();
    let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    let board = cluster.issue_board("pi7", &[addr]).unwrap();
    verify_chain(
        &cluster.ca.cert_pem,
        &board.tls.cert_pem,
        webpki::KeyUsage::server_auth(),
    )
    .unwrap();
    verify_chain(
        &cluster.ca.cert_pem,
        &board.tls.cert_pem,
        webpki::KeyUsage::client_auth(),
    )
    .unwrap();
    let cert = CertificateDer::from_pem_slice(board.tls.cert_pem.as_bytes()).unwrap();
    let ee = webpki::EndEntityCert::try_from(&cert).unwrap();
    ee.verify_is_valid_for_subject_name(&ServerName::IpAddress(addr.into()))
        .unwrap();
    assert!(
        ee.verify_is_valid_for_subject_name(&ServerName::IpAddress(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 8)).into()
        ))
        .is_err()
    );

    // Another cluster's CA does not vouch for it.
    let other = ClusterIdentity::init("shelf").unwrap();
    assert!(
        verify_chain(
            &other.ca.cert_pem,
            &board.tls.cert_pem,
            webpki::KeyUsage::server_auth()
        )
        .is_err()
    );
}

#[test]
fn boards_get_their_own_users() {
    let cluster = ClusterIdentity::init("shelf").unwrap();
    let a = cluster.issue_board("pi1", &[]).unwrap();
    let b = cluster.issue_board("pi2", &[]).unwrap();
    assert_ne!(a.client, b.client);
    assert_ne!(a.client.password, a.system.password);
    assert!(a.client.password.len() >= 32);
    assert!(matches!(
        cluster.issue_board("Pi 3", &[]),
        Err(IdentityError::Name(_))
    ));
    assert!(matches!(
        cluster.without_ca_key().issue_board("pi3", &[]),
        Err(IdentityError::NoCaKey)
    ));
}

#[test]
fn token_is_accepted_by_its_cluster_only() {
    let cluster = ClusterIdentity::init("shelf").unwrap();
    let token: JoinToken = cluster.join_token().unwrap().to_string().parse().unwrap();
    cluster.check_token(&token).unwrap();
    assert!(token.pins(&cluster.ca_fingerprint().unwrap()));
    // A board without the CA key checks tokens all the same.
    cluster.without_ca_key().check_token(&token).unwrap();

    // Another cluster of the same name: other secret, other CA.
    let twin = ClusterIdentity::init("shelf").unwrap();
    assert_eq!(
        twin.check_token(&token),
        Err(TokenError::WrongSecret {
            cluster: "shelf".into()
        })
    );
    assert!(!token.pins(&twin.ca_fingerprint().unwrap()));

    // A cluster of another name.
    let garage = ClusterIdentity::init("garage").unwrap();
    assert_eq!(
        garage.check_token(&token),
        Err(TokenError::OtherCluster {
            token: "shelf".into(),
            ours: "garage".into()
        })
    );
}

#[test]
fn forged_token_with_a_valid_checksum_is_refused() {
    let cluster = ClusterIdentity::init("shelf").unwrap();
    let real = cluster.join_token().unwrap();
    // Someone who knows the format (and so can compute the checksum) but not the secret.
    let forged = JoinToken::new("shelf", [0x42; 16], &cluster.ca_fingerprint().unwrap());
    let forged: JoinToken = forged.to_string().parse().unwrap();
    assert_eq!(
        cluster.check_token(&forged),
        Err(TokenError::WrongSecret {
            cluster: "shelf".into()
        })
    );
    // The right secret pinning another CA.
    let mut wrong_ca = real;
    wrong_ca.ca_fingerprint = [1; 16];
    assert_eq!(cluster.check_token(&wrong_ca), Err(TokenError::CaMismatch));
}

#[test]
fn files_are_private_and_round_trip() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterIdentity::init("shelf").unwrap();
    let path = ClusterIdentity::path(dir.path());
    cluster.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = ClusterIdentity::load(&path).unwrap();
    assert_eq!(loaded.cluster, "shelf");
    assert_eq!(loaded.ca, cluster.ca);
    loaded.check_token(&cluster.join_token().unwrap()).unwrap();
    let sealed = cluster.seal_key.seal("fn", b"v");
    assert_eq!(loaded.seal_key.open("fn", &sealed).unwrap(), b"v");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        ClusterIdentity::load(&path),
        Err(IdentityError::NotPrivate { mode: 0o644, .. })
    ));

    std::fs::write(&path, b"{}").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        ClusterIdentity::load(&path),
        Err(IdentityError::Parse { .. })
    ));

    let board = cluster.issue_board("pi1", &[]).unwrap();
    let board_path = BoardIdentity::path(dir.path());
    board.save(&board_path).unwrap();
    assert_eq!(
        BoardIdentity::load(&board_path).unwrap().client,
        board.client
    );
    let tls = board
        .write_tls_files(&cluster, &dir.path().join("cluster/tls"))
        .unwrap();
    let key_mode = std::fs::metadata(&tls.key_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
}

proptest::proptest! {
    #[test]
    fn token_parser_never_panics_and_what_parses_round_trips(text in "\\PC{0,80}") {
        if let Ok(token) = text.parse::<JoinToken>() {
            proptest::prop_assert_eq!(token.to_string().parse::<JoinToken>(), Ok(token));
        }
    }

    #[test]
    fn tokens_survive_printing(secret in proptest::array::uniform16(0u8..), fp in proptest::array::uniform32(0u8..), cluster in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?") {
        let token = JoinToken::new(&cluster, secret, &fp);
        proptest::prop_assert_eq!(token.to_string().parse::<JoinToken>(), Ok(token));
    }
}
