//! The dashboard (`/ui/`) in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, over WebDriver: [`bramble_testkit::browser`]) against a real
//! `bramble up` on real containerd: issue 17's acceptance list.
//!
//! Screenshots of every page are saved under `target/dashboard/`. The README's two
//! (`docs/dashboard-overview.png`, `docs/dashboard-function.png`) are rewritten only when
//! `BRAMBLE_UPDATE_SCREENSHOTS=1`, so a CI run leaves the tree clean.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bramble_testkit::Node;
use bramble_testkit::browser::{Browser, artifact};
use bramble_testkit::harness::{Need, Suite};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FIXTURE: &str = "docker.io/library/fixture:test";
/// How long the page may take to show what the server pushed.
const SHOWN: Duration = Duration::from_secs(10);
/// How long a function may take to become ready.
const READY: Duration = Duration::from_secs(60);

/// The tests of this module, as a part of the `it` binary.
pub(crate) fn suite() -> Suite {
    let mut needs = crate::NODE.to_vec();
    needs.extend([Need::Binary("chromium"), Need::Binary("chromedriver")]);
    Suite::new("dashboard", &needs)
        .async_trial(
            "log_in_see_a_function_invoke_it_and_scale_it_to_zero",
            log_in_see_a_function_invoke_it_and_scale_it_to_zero,
        )
        .async_trial(
            "deploy_from_the_form_and_see_a_crash_loop_reason",
            deploy_from_the_form_and_see_a_crash_loop_reason,
        )
        .async_trial(
            "hardware_edges_cross_site_posts_and_a_phone_screen",
            hardware_edges_cross_site_posts_and_a_phone_screen,
        )
        .async_trial(
            "upload_and_remove_an_image_and_delete_a_function",
            upload_and_remove_an_image_and_delete_a_function,
        )
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Saves the screenshot `name`; with `BRAMBLE_UPDATE_SCREENSHOTS=1` also as the README's
/// `docs/dashboard-NAME.png` when `readme`.
async fn screenshot(browser: &Browser, name: &str, readme: bool) -> TestResult {
    browser.screenshot(&artifact(name)).await?;
    if readme && std::env::var_os("BRAMBLE_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        browser
            .screenshot(
                &workspace()
                    .join("docs")
                    .join(format!("dashboard-{name}.png")),
            )
            .await?;
    }
    Ok(())
}

async fn node(name: &str, extra_config: &str) -> Result<Node, Box<dyn std::error::Error>> {
    Node::with_fixture(Path::new(env!("CARGO_BIN_EXE_bramble")), name, extra_config).await
}

async fn deploy(node: &Node, body: &Value) -> TestResult {
    let r = node
        .api("POST", "/system/functions", body.to_string().as_bytes())
        .await?;
    r.expect(200, "deploy")?;
    Ok(())
}

/// With `BRAMBLE_BASELINE_BINARY` (a `bramble` built without the dashboard): that
/// binary's RSS in the same state (one ready function, no page), for the README's comparison.
async fn baseline_rss() -> TestResult {
    let Some(binary) = std::env::var_os("BRAMBLE_BASELINE_BINARY") else {
        return Ok(());
    };
    let node = Node::with_fixture(Path::new(&binary), "ui-baseline", "").await?;
    deploy(
        &node,
        &json!({"service": "hello", "image": FIXTURE, "envVars": {"BODY": "hi from the dashboard"}}),
    )
    .await?;
    node.wait_available("hello", 1).await?;
    let pid = node.pid().ok_or("the baseline node is not running")?;
    eprintln!("baseline bramble RSS: {} KiB", crate::node::rss_kib(pid));
    Ok(())
}

fn base(node: &Node) -> String {
    format!("http://{}", node.addr())
}

/// Opens `/` like a person would (a browser asking for HTML is sent to the dashboard, and
/// from there to the login form) and logs in with the node's credentials.
async fn log_in(browser: &Browser, node: &Node) -> TestResult {
    browser.goto(&format!("{}/", base(node))).await?;
    let url = browser.url().await?;
    assert!(
        url.contains("/ui/login"),
        "not sent to the login form: {url}"
    );
    screenshot(browser, "login", false).await?;
    let (user, password) = node.credentials()?;
    browser.log_in(&user, &password, SHOWN).await?;
    Ok(())
}

/// A script expression: the state the page shows in `selector`'s `data-state`.
fn state_of(selector: &str) -> String {
    format!("document.querySelector({selector:?})?.querySelector('[data-state]')?.dataset.state")
}

async fn log_in_see_a_function_invoke_it_and_scale_it_to_zero() -> TestResult {
    let node = node("ui-basic", "").await?;
    deploy(
        &node,
        &json!({"service": "hello", "image": FIXTURE, "envVars": {"BODY": "hi from the dashboard"}}),
    )
    .await?;
    node.wait_available("hello", 1).await?;
    let pid = node.pid().ok_or("the node is not running")?;
    eprintln!(
        "bramble RSS before any page: {} KiB",
        crate::node::rss_kib(pid)
    );
    baseline_rss().await?;
    let browser = Browser::start(1280, 1500).await?;
    log_in(&browser, &node).await?;

    // The overview lists it, ready, and its invocations count as they happen.
    let row = r#"tr[data-function="hello.openfaas-fn"]"#;
    let state = browser
        .wait_for(
            "hello ready on the overview",
            &format!("return {} === 'ready' && 'ready'", state_of(row)),
            SHOWN,
        )
        .await?;
    assert_eq!(state, "ready");
    // What the README states: the page's weight and its time to first render, here.
    let timing = browser
        .run(
            "const n = performance.getEntriesByType('navigation')[0]; \
             const fcp = performance.getEntriesByName('first-contentful-paint')[0]; \
             const files = performance.getEntriesByType('resource').filter((r) => !r.name.includes('/ui/events')); \
             return {firstContentfulPaintMs: fcp && fcp.startTime, domContentLoadedMs: n.domContentLoadedEventEnd, \
                     transferBytes: files.reduce((sum, r) => sum + r.transferSize, n.transferSize), \
                     decodedBytes: files.reduce((sum, r) => sum + r.decodedBodySize, n.decodedBodySize)}",
            &[],
        )
        .await?;
    eprintln!("overview: {timing}");
    assert!(
        timing["transferBytes"].as_f64().unwrap_or(f64::MAX) < 300_000.0,
        "{timing}"
    );
    screenshot(&browser, "overview", true).await?;

    // Its page: invoke it from the form, see the status and the body.
    browser
        .find(&format!("{row} a[href='/ui/functions/hello.openfaas-fn']"))
        .await?
        .click()
        .await?;
    browser
        .wait_for(
            "the function's page ready",
            "return document.querySelector('.title-row [data-state]')?.dataset.state === 'ready'",
            SHOWN,
        )
        .await?;
    browser
        .find("#invoke-body")
        .await?
        .send_keys("ping")
        .await?;
    browser
        .find("form.invoke button[type=submit]")
        .await?
        .click()
        .await?;
    let status = browser
        .wait_for(
            "the invocation's answer",
            "return document.querySelector('.invoke-result .status')?.dataset.status || null",
            SHOWN,
        )
        .await?;
    assert_eq!(status, "200");
    let body = browser
        .find(".invoke-result .answer-body")
        .await?
        .text()
        .await?;
    assert_eq!(body.trim(), "hi from the dashboard");
    // The invocation reaches the page's recent invocations (pushed by the server).
    browser
        .wait_for(
            "the invocation in the recent invocations",
            "return [...document.querySelectorAll('section[aria-labelledby=invocations-title] td')].some((td) => td.textContent.includes('200'))",
            SHOWN,
        )
        .await?;
    browser
        .run("window.scrollTo(0, 0); return null", &[])
        .await?;
    screenshot(&browser, "function", true).await?;

    // Scale to zero from the page: the state changes live, without a reload.
    browser
        .run("window.__bramble_not_reloaded = true; return null", &[])
        .await?;
    browser
        .find("section[aria-labelledby=scale-title] button[type=button]")
        .await?
        .click()
        .await?;
    browser
        .wait_for(
            "the state after scaling to zero",
            "return window.__bramble_not_reloaded && document.querySelector('.title-row [data-state]')?.dataset.state === 'scaled-to-zero'",
            SHOWN,
        )
        .await?;
    let s = node.status("hello").await?.ok_or("hello is gone")?;
    // `replicas` is left out at 0, as OpenFaaS does.
    assert_eq!(s["replicas"].as_u64().unwrap_or(0), 0, "{s}");
    screenshot(&browser, "function-scaled-to-zero", false).await?;
    drop(browser);
    eprintln!(
        "bramble RSS after the page closed: {} KiB",
        crate::node::rss_kib(pid)
    );
    Ok(())
}

async fn deploy_from_the_form_and_see_a_crash_loop_reason() -> TestResult {
    let mut node = node("ui-deploy", "").await?;
    deploy(
        &node,
        &json!({"service": "crashy", "image": FIXTURE, "envVars": {"EXIT_ON_START": "1"}}),
    )
    .await?;
    let browser = Browser::start(1280, 900).await?;
    log_in(&browser, &node).await?;

    // A crash loop shows as such on the overview, with its reason.
    let row = r#"tr[data-function="crashy.openfaas-fn"]"#;
    browser
        .wait_for(
            "crashy crash-looping on the overview",
            &format!("return {} === 'crash-looping'", state_of(row)),
            READY,
        )
        .await?;
    let reason = browser
        .find(&format!("{row} .reason"))
        .await?
        .text()
        .await?;
    assert!(reason.contains("exit code 1"), "{reason:?}");
    screenshot(&browser, "overview-crash-loop", false).await?;

    // Deploy from the form: a bad name is refused next to its field, then a good one opens
    // the function's page, where it becomes ready.
    browser.find("a[data-nav=deploy]").await?.click().await?;
    browser
        .find("#deploy-image")
        .await?
        .send_keys(FIXTURE)
        .await?;
    browser
        .find("#deploy-service")
        .await?
        .send_keys("Bad_Name")
        .await?;
    browser
        .find("form.form button[type=submit]")
        .await?
        .click()
        .await?;
    let error = browser
        .wait_for(
            "the name's error next to its field",
            "const e = document.getElementById('deploy-service-error'); return e && !e.hidden && e.textContent",
            SHOWN,
        )
        .await?;
    assert!(!error.as_str().unwrap_or_default().is_empty());
    screenshot(&browser, "deploy-error", false).await?;
    let service = browser.find("#deploy-service").await?;
    service.clear().await?;
    service.send_keys("formed").await?;
    browser
        .find("form.form button[type=submit]")
        .await?
        .click()
        .await?;
    browser
        .wait_for(
            "the deployed function ready on its page",
            "return location.pathname === '/ui/functions/formed.openfaas-fn' && document.querySelector('.title-row [data-state]')?.dataset.state === 'ready'",
            READY,
        )
        .await?;
    assert!(node.status("formed").await?.is_some());
    screenshot(&browser, "deployed", false).await?;

    // bramble goes away: the page says so, and reconnects by itself when it is back. Its
    // sessions lived in memory, so the page then asks for a login and comes back here.
    node.stop()?;
    browser
        .wait_for(
            "the lost connection shown",
            "return document.getElementById('connection').dataset.state === 'reconnecting'",
            SHOWN,
        )
        .await?;
    screenshot(&browser, "connection-lost", false).await?;
    node.start_again()?;
    browser
        .wait_for(
            "the login form after bramble restarted",
            "return location.pathname === '/ui/login' && location.search.includes('formed')",
            READY,
        )
        .await?;
    let (user, password) = node.credentials()?;
    browser.find("#username").await?.send_keys(&user).await?;
    browser
        .find("#password")
        .await?
        .send_keys(&password)
        .await?;
    browser
        .find("form.login-form button[type=submit]")
        .await?
        .click()
        .await?;
    browser
        .wait_for(
            "the function's page, live again",
            "return location.pathname === '/ui/functions/formed.openfaas-fn' && document.getElementById('connection').dataset.state === 'live'",
            READY,
        )
        .await?;
    Ok(())
}

/// A page on another site (another origin: `localhost` instead of the node's `127.0.0.1`)
/// that makes the logged-in browser post a scale to zero to the node as soon as it opens (a
/// `no-cors` request with the browser's credentials: what a hostile page can do), then says
/// `sent` in its title. Answers every request with that page; returns its port.
async fn hostile_site(target: &str) -> Result<u16, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let page = format!(
        "<!doctype html><title>hostile</title><script>\
         fetch('{target}/system/scale-function/hello', {{method: 'POST', mode: 'no-cors', \
         credentials: 'include', body: JSON.stringify({{serviceName: 'hello', replicas: 0}})}})\
         .finally(() => {{ document.title = 'sent'; }});</script>"
    );
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    Ok(port)
}

async fn hardware_edges_cross_site_posts_and_a_phone_screen() -> TestResult {
    let node = node("ui-hw", "hardware = { backend = \"simulator\" }").await?;
    deploy(
        &node,
        &json!({"service": "hello", "image": FIXTURE,
                "annotations": {"bramble.gpio": "GPIO17:in:pull-up"}}),
    )
    .await?;
    node.wait_available("hello", 1).await?;
    let browser = Browser::start(1280, 900).await?;
    log_in(&browser, &node).await?;

    // The hardware page: a simulated edge shows within a second.
    browser.find("a[data-nav=hardware]").await?.click().await?;
    let line = r#"[data-line="GPIO17"]"#;
    browser
        .wait_for(
            "GPIO17 on the hardware page",
            &format!("return document.querySelector('{line}')?.dataset.level || null"),
            SHOWN,
        )
        .await?;
    let before = browser
        .run(
            &format!("return document.querySelector('{line}').dataset.level"),
            &[],
        )
        .await?;
    let level = if before == "1" { 0 } else { 1 };
    let started = std::time::Instant::now();
    node.api(
        "PUT",
        "/system/gpio/GPIO17",
        json!({ "level": level }).to_string().as_bytes(),
    )
    .await?
    .expect(200, "drive GPIO17")?;
    browser
        .wait_for(
            "the edge on the hardware page",
            &format!(
                "return document.querySelector('{line}').dataset.level === '{level}' && document.querySelector('{line} .line-edges').textContent"
            ),
            Duration::from_secs(1),
        )
        .await?;
    eprintln!("edge shown {:?} after the API call", started.elapsed());
    screenshot(&browser, "hardware", false).await?;

    // Cross-site: a page elsewhere makes the logged-in browser post to the node.
    let port = hostile_site(&base(&node)).await?;
    browser.goto(&format!("http://localhost:{port}/")).await?;
    browser
        .wait_for(
            "the hostile page's request",
            "return document.title === 'sent'",
            SHOWN,
        )
        .await?;
    let s = node.status("hello").await?.ok_or("hello is gone")?;
    assert_eq!(s["replicas"], 1, "a cross-site form scaled hello: {s}");
    // The dashboard's own origin without its CSRF token is refused too.
    browser.goto(&format!("{}/ui/", base(&node))).await?;
    let status = browser
        .wait_for(
            "a change without the CSRF token",
            "if (!window.__csrf) { window.__csrf = 'pending'; fetch('/system/scale-function/hello', {method: 'POST', body: JSON.stringify({serviceName: 'hello', replicas: 0})}).then((r) => { window.__csrf = r.status; }); } return window.__csrf === 'pending' ? null : window.__csrf",
            SHOWN,
        )
        .await?;
    assert_eq!(status, 403);
    let s = node.status("hello").await?.ok_or("hello is gone")?;
    assert_eq!(
        s["replicas"], 1,
        "a change without the CSRF token went through: {s}"
    );

    // The images page lists the board's images.
    browser.find("a[data-nav=images]").await?.click().await?;
    browser
        .wait_for(
            "the fixture image on the images page",
            "return document.querySelector('main').textContent.includes('fixture:test')",
            SHOWN,
        )
        .await?;
    screenshot(&browser, "images", false).await?;

    // A phone: no page scrolls sideways at 360 px.
    browser.resize(360, 800).await?;
    for (page, ready) in [
        ("/ui/", "tr[data-function]"),
        ("/ui/functions/hello.openfaas-fn", ".title-row [data-state]"),
        ("/ui/deploy", "#deploy-image"),
        ("/ui/images", "main h1"),
        ("/ui/hardware", "[data-line]"),
    ] {
        browser.goto(&format!("{}{page}", base(&node))).await?;
        browser
            .wait_for(
                page,
                &format!("return !!document.querySelector('{ready}')"),
                SHOWN,
            )
            .await?;
        let widths = browser
            .run(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
                &[],
            )
            .await?;
        assert!(
            widths[0].as_u64() <= widths[1].as_u64() && widths[1].as_u64() <= Some(360),
            "{page} scrolls sideways at 360 px: {widths}"
        );
        let name = page.trim_matches('/').replace('/', "-");
        screenshot(&browser, &format!("phone-{name}"), false).await?;
    }
    Ok(())
}

/// The image names `GET /system/images` lists.
async fn image_names(node: &Node) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let r = node.api("GET", "/system/images", b"").await?;
    r.expect(200, "list images")?;
    let images: Value = serde_json::from_slice(&r.body)?;
    Ok(images
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Waits for the page's confirmation dialog saying `says`, saves its screenshot `shot` if
/// given, and answers it with its button `button` (`confirm` or `cancel`).
async fn answer(browser: &Browser, says: &str, shot: Option<&str>, button: &str) -> TestResult {
    browser
        .wait_for(
            &format!("a confirmation saying {says:?}"),
            &format!(
                "return document.querySelector('dialog[open]')?.textContent.includes({says:?})"
            ),
            SHOWN,
        )
        .await?;
    if let Some(name) = shot {
        screenshot(browser, name, false).await?;
    }
    browser
        .find(&format!("dialog[open] button[value={button}]"))
        .await?
        .click()
        .await?;
    Ok(())
}

/// A script expression: whether the images page lists an image whose name ends with `name`.
fn listed(name: &str) -> String {
    format!(
        "[...document.querySelectorAll('table.images td.mono')].some((td) => td.textContent.endsWith({name:?}))"
    )
}

async fn upload_and_remove_an_image_and_delete_a_function() -> TestResult {
    let node = node("ui-images", "").await?;
    deploy(
        &node,
        &json!({"service": "hello", "image": FIXTURE, "envVars": {"BODY": "hi"}}),
    )
    .await?;
    node.wait_available("hello", 1).await?;
    // An archive of an image the board does not have (the fixture, with its own configuration).
    let (archive, _) = bramble_testkit::images::fixture_image_with_env(
        node.env.scratch(),
        "uploaded:v1",
        None,
        &[("BODY", "uploaded")],
    )?;
    let archive_size = std::fs::metadata(&archive)?.len();
    let browser = Browser::start(1280, 1000).await?;
    log_in(&browser, &node).await?;

    // Images: the one hello uses cannot be removed.
    browser.find("a[data-nav=images]").await?.click().await?;
    browser
        .wait_for(
            "the fixture image on the images page",
            &format!("return {}", listed("fixture:test")),
            SHOWN,
        )
        .await?;
    let in_use = browser
        .run(
            "return document.querySelector('button[aria-label$=\"fixture:test\"]').disabled",
            &[],
        )
        .await?;
    assert_eq!(in_use, true, "the image hello uses can be removed");

    // Upload the archive through the file input; the progress bar shows the bytes going.
    browser
        .run(
            "const p = document.getElementById('import-progress'); window.__progress = []; \
             new MutationObserver(() => window.__progress.push({hidden: p.hidden, value: p.value})) \
                 .observe(p, {attributes: true}); return null",
            &[],
        )
        .await?;
    browser
        .find("#import-file")
        .await?
        .send_keys(&archive.display().to_string())
        .await?;
    let started = std::time::Instant::now();
    browser
        .find("form.form button[type=submit]")
        .await?
        .click()
        .await?;
    let message = browser
        .wait_for(
            "the uploaded image listed",
            &format!(
                "return {} && document.querySelector('.form-message').textContent",
                listed("uploaded:v1")
            ),
            READY,
        )
        .await?;
    eprintln!(
        "measured: upload of a {} KiB archive → listed: {:?}",
        archive_size >> 10,
        started.elapsed()
    );
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("Imported") && m.contains("uploaded:v1")),
        "{message}"
    );
    let progress = browser.run("return window.__progress", &[]).await?;
    let shown = progress.as_array().is_some_and(|all| {
        all.iter()
            .any(|p| p["hidden"] == false && p["value"].as_f64() == Some(1.0))
    });
    assert!(
        shown,
        "no progress shown up to the whole archive: {progress}"
    );
    assert_eq!(
        browser
            .run(
                "return document.getElementById('import-progress').hidden",
                &[]
            )
            .await?,
        true
    );
    assert!(
        image_names(&node)
            .await?
            .iter()
            .any(|n| n.ends_with("uploaded:v1")),
        "the API does not list the uploaded image"
    );
    screenshot(&browser, "images-uploaded", false).await?;

    // Remove it: asked first, then gone from the page and the API.
    browser
        .find("button[aria-label$=\"uploaded:v1\"]")
        .await?
        .click()
        .await?;
    answer(&browser, "uploaded:v1", None, "confirm").await?;
    browser
        .wait_for(
            "the removed image gone from the page",
            &format!(
                "return !{} && {} && document.querySelector('.form-message').textContent.includes('removed')",
                listed("uploaded:v1"),
                listed("fixture:test")
            ),
            SHOWN,
        )
        .await?;
    let names = image_names(&node).await?;
    assert!(
        !names.iter().any(|n| n.ends_with("uploaded:v1")),
        "removed, yet listed by the API: {names:?}"
    );

    // Delete hello from its page: cancelled, it stays; confirmed, it is gone.
    browser
        .goto(&format!("{}/ui/functions/hello.openfaas-fn", base(&node)))
        .await?;
    browser
        .wait_for(
            "hello's page",
            "return document.querySelector('.title-row [data-state]')?.dataset.state === 'ready'",
            SHOWN,
        )
        .await?;
    let delete = "section[aria-labelledby=delete-title] button.button-danger";
    browser.find(delete).await?.click().await?;
    answer(
        &browser,
        "Delete hello",
        Some("delete-confirmation"),
        "cancel",
    )
    .await?;
    browser
        .wait_for(
            "the dialog closed",
            "return !document.querySelector('dialog')",
            SHOWN,
        )
        .await?;
    let path = browser.run("return location.pathname", &[]).await?;
    assert_eq!(path, "/ui/functions/hello.openfaas-fn");
    assert!(
        node.status("hello").await?.is_some(),
        "cancelled, yet hello was deleted"
    );
    browser.find(delete).await?.click().await?;
    answer(&browser, "Delete hello", None, "confirm").await?;
    browser
        .wait_for(
            "the overview without hello",
            "return location.pathname === '/ui/' && document.querySelector('.empty') && !document.querySelector('.empty').hidden && !document.querySelector('tr[data-function]')",
            SHOWN,
        )
        .await?;
    assert!(
        node.status("hello").await?.is_none(),
        "confirmed, yet the API still has hello"
    );
    screenshot(&browser, "function-deleted", false).await?;
    Ok(())
}
