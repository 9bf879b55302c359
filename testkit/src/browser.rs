//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`),
//! for the dashboard's browser tests: a small client of the W3C WebDriver protocol over
//! [`crate::http`], no WebDriver crate.
//!
//! [`Browser::start`] runs `chromedriver` on a free loopback port of the test's network
//! namespace and opens one session: headless, `--no-sandbox` (tests run as root),
//! `--disable-gpu --disable-background-networking --disable-component-update --disable-sync
//! --no-first-run`, a fresh `--user-data-dir`. Dropping the [`Browser`] ends the session and
//! kills the driver.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the driver may take to come up.
const DRIVER_START: Duration = Duration::from_secs(20);

/// Any failure of the browser or its driver, with what was being done.
pub type BrowserResult<T> = Result<T, String>;

/// Where the dashboard tests' screenshot `name` goes (a test artifact):
/// `target/dashboard/NAME.png` (or under `CARGO_TARGET_DIR`).
pub fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("dashboard").join(format!("{name}.png"))
}

/// A headless Chromium with one WebDriver session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium with a window of `width` × `height`
    /// CSS pixels.
    pub async fn start(width: u32, height: u32) -> BrowserResult<Browser> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for chromedriver: {e}"))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let driver = Command::new(
            crate::harness::find_executable("chromedriver").ok_or("chromedriver not found")?,
        )
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start chromedriver: {e}"))?;
        let profile = tempfile::tempdir().map_err(|e| format!("no profile directory: {e}"))?;
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let started = Instant::now();
        loop {
            match browser.raw("GET", "/status", None).await {
                Ok(v) if v["value"]["ready"] == true => break,
                result if started.elapsed() > DRIVER_START => {
                    return Err(format!(
                        "chromedriver not ready within {DRIVER_START:?}: {result:?}"
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let chromium = crate::harness::find_executable("chromium").ok_or("chromium not found")?;
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let v = browser.raw("POST", "/session", Some(&caps)).await?;
        browser.session = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session from chromedriver: {v}"))?
            .to_owned();
        Ok(browser)
    }

    async fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> BrowserResult<Value> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let headers: &[(&str, &str)] = &[("Content-Type", "application/json")];
        let r = crate::http::request(
            self.addr,
            method,
            path,
            headers,
            body.as_bytes(),
            COMMAND_TIMEOUT,
        )
        .await
        .map_err(|e| format!("WebDriver {method} {path}: {e}"))?;
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("WebDriver {method} {path}: not JSON ({e}): {}", r.text()))?;
        if r.status != 200 {
            return Err(format!(
                "WebDriver {method} {path}: {} {}",
                r.status, v["value"]["message"]
            ));
        }
        Ok(v)
    }

    async fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> BrowserResult<Value> {
        let path = format!("/session/{}{path}", self.session);
        Ok(self.raw(method, &path, body).await?["value"].take())
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) -> BrowserResult<()> {
        self.command("POST", "/url", Some(&json!({"url": url})))
            .await
            .map(drop)
    }

    /// The current URL.
    pub async fn url(&self) -> BrowserResult<String> {
        let v = self.command("GET", "/url", None).await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// The first element matching the CSS `selector`.
    pub async fn find(&self, selector: &str) -> BrowserResult<Element<'_>> {
        let v = self
            .command(
                "POST",
                "/element",
                Some(&json!({"using": "css selector", "value": selector})),
            )
            .await
            .map_err(|e| format!("{selector}: {e}"))?;
        let id = v[ELEMENT]
            .as_str()
            .ok_or_else(|| format!("{selector}: no element reference in {v}"))?;
        Ok(Element {
            browser: self,
            id: id.to_owned(),
        })
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns what it returns.
    pub async fn run(&self, script: &str, args: &[Value]) -> BrowserResult<Value> {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
        .await
    }

    /// Polls `script` until it returns something truthy (not `null`, `false`, `""` or 0), and
    /// returns that; fails after `timeout` with `what` and the last value. For what the page
    /// shows once the server has pushed it: the DOM has no other readiness signal.
    pub async fn wait_for(
        &self,
        what: &str,
        script: &str,
        timeout: Duration,
    ) -> BrowserResult<Value> {
        let started = Instant::now();
        loop {
            let v = self.run(script, &[]).await?;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if started.elapsed() > timeout {
                return Err(format!("{what}: not within {timeout:?} (last: {v})"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Saves a PNG of the viewport at `path` (its directory is made).
    pub async fn screenshot(&self, path: &Path) -> BrowserResult<()> {
        let v = self.command("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| format!("screenshot is not base64: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Logs in on the dashboard's login form, which the browser shows, and waits until the
    /// dashboard is open (logged in: its logout control shown).
    pub async fn log_in(&self, user: &str, password: &str, timeout: Duration) -> BrowserResult<()> {
        self.find("#username").await?.send_keys(user).await?;
        self.find("#password").await?.send_keys(password).await?;
        self.find("form.login-form button[type=submit]")
            .await?
            .click()
            .await?;
        self.wait_for(
            "the dashboard after logging in",
            "return location.pathname === '/ui/' && document.getElementById('logout') && !document.getElementById('logout').hidden",
            timeout,
        )
        .await
        .map(drop)
    }

    /// Resizes the window to `width` × `height`.
    pub async fn resize(&self, width: u32, height: u32) -> BrowserResult<()> {
        self.command(
            "POST",
            "/window/rect",
            Some(&json!({"width": width, "height": height})),
        )
        .await
        .map(drop)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session quits Chromium (a killed driver would leave it running); a
        // blocking exchange of a few hundred ms, in a test.
        if !self.session.is_empty() {
            use std::io::{Read as _, Write as _};
            if let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.addr, DRIVER_START) {
                let _ = s.set_read_timeout(Some(COMMAND_TIMEOUT));
                let request = format!(
                    "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                    self.session, self.addr
                );
                let mut answer = [0u8; 256];
                if s.write_all(request.as_bytes()).is_ok() {
                    let _ = s.read(&mut answer);
                }
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// An element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    /// Types `text` into it.
    pub async fn send_keys(&self, text: &str) -> BrowserResult<()> {
        self.browser
            .command(
                "POST",
                &format!("/element/{}/value", self.id),
                Some(&json!({"text": text})),
            )
            .await
            .map(drop)
    }

    /// Clicks it.
    pub async fn click(&self) -> BrowserResult<()> {
        self.browser
            .command(
                "POST",
                &format!("/element/{}/click", self.id),
                Some(&json!({})),
            )
            .await
            .map(drop)
    }

    /// Empties an input or a text area.
    pub async fn clear(&self) -> BrowserResult<()> {
        self.browser
            .command(
                "POST",
                &format!("/element/{}/clear", self.id),
                Some(&json!({})),
            )
            .await
            .map(drop)
    }

    /// Its rendered text.
    pub async fn text(&self) -> BrowserResult<String> {
        let v = self
            .browser
            .command("GET", &format!("/element/{}/text", self.id), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }
}
