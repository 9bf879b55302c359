//! `led-button`: an LED that is on while a button is pressed, through bramble's hardware
//! helper — no `/dev/gpiomem`, no privileged container.
//!
//! The function watches the button line on its hardware socket (`/run/bramble/hw.sock`,
//! `GET /v1/gpio/BUTTON/watch`, one JSON edge per line) and sets the LED line
//! (`PUT /v1/gpio/LED`) to follow it. Levels are logical: deployed with the button granted
//! `active-low`, a press reads 1. If the socket is missing or the stream breaks (the node
//! restarting), it reconnects every second. It is also a normal bramble function: HTTP on
//! port 8080, `/_/health` answers `OK`, `/` reports the LED and the button.
//!
//! | variable    | default                | meaning                      |
//! |-------------|------------------------|------------------------------|
//! | `LED`       | `GPIO27`               | the output line of the LED   |
//! | `BUTTON`    | `GPIO17`               | the input line of the button |
//! | `HW_SOCKET` | `/run/bramble/hw.sock` | the hardware socket          |
//! | `PORT`      | `8080`                 | the HTTP port                |
//!
//! It uses only the standard library, so it links statically (see README.md).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// How long a plain request on the hardware socket may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before reconnecting to the hardware socket.
const RETRY: Duration = Duration::from_secs(1);
/// Largest chunk accepted from the watch stream.
const MAX_CHUNK: usize = 1 << 20;

struct Config {
    led: String,
    button: String,
    socket: String,
    port: String,
}

#[derive(Default)]
struct Status {
    led_on: bool,
    pressed: bool,
    presses: u64,
    /// Why the hardware is not followed right now.
    error: Option<String>,
}

type Shared = Arc<Mutex<Status>>;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn valid_line(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 31
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'))
}

fn main() {
    let config = Config {
        led: env_or("LED", "GPIO27"),
        button: env_or("BUTTON", "GPIO17"),
        socket: env_or("HW_SOCKET", "/run/bramble/hw.sock"),
        port: env_or("PORT", "8080"),
    };
    for (name, line) in [("LED", &config.led), ("BUTTON", &config.button)] {
        if !valid_line(line) {
            eprintln!("led-button: {name}={line:?} is not a GPIO line name");
            std::process::exit(2);
        }
    }
    let listener = match TcpListener::bind(format!("0.0.0.0:{}", config.port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("led-button: cannot listen on port {}: {e}", config.port);
            std::process::exit(1);
        }
    };
    println!(
        "led-button: listening on :{}; LED {} follows button {} via {}",
        config.port, config.led, config.button, config.socket
    );
    let status: Shared = Arc::default();
    let config = Arc::new(config);
    {
        let (config, status) = (Arc::clone(&config), Arc::clone(&status));
        thread::spawn(move || control_loop(&config, &status));
    }
    for stream in listener.incoming().flatten() {
        let (config, status) = (Arc::clone(&config), Arc::clone(&status));
        thread::spawn(move || {
            if let Err(e) = serve(stream, &config, &status) {
                eprintln!("led-button: {e}");
            }
        });
    }
}

fn lock(status: &Shared) -> std::sync::MutexGuard<'_, Status> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Follows the button forever, reconnecting when the hardware socket goes away.
fn control_loop(config: &Config, status: &Shared) {
    let mut last_error = String::new();
    loop {
        let error = match follow(config, status) {
            Ok(()) => "the watch stream ended".to_owned(),
            Err(e) => e.to_string(),
        };
        if error != last_error {
            eprintln!("led-button: hardware: {error} (retrying every second)");
            last_error.clone_from(&error);
        }
        lock(status).error = Some(error);
        thread::sleep(RETRY);
    }
}

/// Watches the button and sets the LED until the stream breaks.
fn follow(config: &Config, status: &Shared) -> io::Result<()> {
    // Watch first, then read: a press between the two cannot be missed.
    let mut events =
        EventStream::open(&config.socket, &format!("/v1/gpio/{}/watch", config.button))?;
    let (code, body) = request(
        &config.socket,
        "GET",
        &format!("/v1/gpio/{}", config.button),
        "",
    )?;
    if code != 200 {
        return Err(io::Error::other(format!(
            "reading {}: {code} {}",
            config.button,
            body.trim()
        )));
    }
    let level = field(&body, "level").ok_or_else(|| bad("no level in the answer"))?;
    apply(config, status, level == 1)?;
    lock(status).error = None;
    println!("led-button: following button {}", config.button);
    while let Some(line) = events.next_line()? {
        let level = field(&line, "level").ok_or_else(|| bad("no level in the event"))?;
        apply(config, status, level == 1)?;
    }
    Ok(())
}

/// Sets the LED to follow the button.
fn apply(config: &Config, status: &Shared, pressed: bool) -> io::Result<()> {
    let body = format!("{{\"level\":{}}}", u8::from(pressed));
    let (code, answer) = request(
        &config.socket,
        "PUT",
        &format!("/v1/gpio/{}", config.led),
        &body,
    )?;
    if code != 200 {
        return Err(io::Error::other(format!(
            "setting {}: {code} {}",
            config.led,
            answer.trim()
        )));
    }
    let mut status = lock(status);
    if pressed && !status.pressed {
        status.presses += 1;
    }
    if status.pressed != pressed || status.led_on != pressed {
        println!(
            "led-button: button {} → LED {}",
            if pressed { "pressed" } else { "released" },
            if pressed { "on" } else { "off" }
        );
    }
    status.pressed = pressed;
    status.led_on = pressed;
    Ok(())
}

fn bad(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// A small unsigned number field of a flat JSON object, e.g. `"level":1`.
fn field(json: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\"");
    let rest = json
        .split_once(&key)?
        .1
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Reads a response head: the status and whether the body is chunked.
fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, bool, Option<usize>)> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(bad("the hardware socket closed without answering"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut chunked = false;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok();
            }
        }
    }
    Ok((status, chunked, length))
}

fn send_request(stream: &UnixStream, method: &str, path: &str, body: &str) -> io::Result<()> {
    let mut writer = stream;
    write!(
        writer,
        "{method} {path} HTTP/1.1\r\nHost: hw\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    writer.flush()
}

/// One request on the hardware socket: the status and the body.
fn request(socket: &str, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    send_request(&stream, method, path, body)?;
    let mut reader = BufReader::new(stream);
    let (status, chunked, length) = read_head(&mut reader)?;
    let mut data = Vec::new();
    if chunked {
        let mut chunks = Chunks { reader };
        while let Some(chunk) = chunks.next_chunk()? {
            data.extend_from_slice(&chunk);
        }
    } else if let Some(length) = length {
        reader.take(length as u64).read_to_end(&mut data)?;
    } else {
        reader.take(MAX_CHUNK as u64).read_to_end(&mut data)?;
    }
    Ok((status, String::from_utf8_lossy(&data).into_owned()))
}

/// A chunked body, chunk by chunk.
struct Chunks {
    reader: BufReader<UnixStream>,
}

impl Chunks {
    fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            return Ok(None);
        }
        if size > MAX_CHUNK {
            return Err(bad("chunk too large"));
        }
        let mut data = vec![0u8; size];
        self.reader.read_exact(&mut data)?;
        let mut crlf = [0u8; 2];
        self.reader.read_exact(&mut crlf)?;
        Ok(Some(data))
    }
}

/// A watch stream: NDJSON lines as they come.
struct EventStream {
    chunks: Chunks,
    pending: Vec<u8>,
}

impl EventStream {
    fn open(socket: &str, path: &str) -> io::Result<EventStream> {
        let stream = UnixStream::connect(socket)?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        send_request(&stream, "GET", path, "")?;
        let mut reader = BufReader::new(stream);
        let (status, chunked, _) = read_head(&mut reader)?;
        if status != 200 {
            let mut text = String::new();
            let _ = reader.take(4096).read_to_string(&mut text);
            return Err(io::Error::other(format!(
                "watching: {status} {}",
                text.trim()
            )));
        }
        if !chunked {
            return Err(bad("the watch stream is not chunked"));
        }
        // Events come when the button moves: wait for them without a timeout.
        reader.get_ref().set_read_timeout(None)?;
        Ok(EventStream {
            chunks: Chunks { reader },
            pending: Vec::new(),
        })
    }

    /// The next line, or `None` when the stream ended.
    fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            match self.chunks.next_chunk()? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Ok(None),
            }
            if self.pending.len() > MAX_CHUNK {
                return Err(bad("event line too long"));
            }
        }
    }
}

/// Answers one HTTP request (`Connection: close`).
fn serve(stream: TcpStream, config: &Config, status: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let text = if path == "/_/health" {
        "OK".to_owned()
    } else {
        let status = lock(status);
        let mut text = format!(
            "LED {} is {}; button {} is {}; {} presses\n",
            config.led,
            if status.led_on { "on" } else { "off" },
            config.button,
            if status.pressed {
                "pressed"
            } else {
                "released"
            },
            status.presses
        );
        if let Some(error) = &status.error {
            text.push_str(&format!("hardware: not connected: {error}\n"));
        }
        text
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_events() {
        let event = r#"{"line":"GPIO17","edge":"rising","level":1,"timestamp_ns":5,"seqno":2,"line_seqno":1}"#;
        assert_eq!(field(event, "level"), Some(1));
        assert_eq!(field(event, "seqno"), Some(2));
        assert_eq!(field(r#"{"level" : 0}"#, "level"), Some(0));
        assert_eq!(field(r#"{"line":"x"}"#, "level"), None);
        assert_eq!(field(r#"{"level":"high"}"#, "level"), None);
    }

    #[test]
    fn line_names() {
        assert!(valid_line("GPIO17"));
        assert!(!valid_line("GPIO 17") && !valid_line("a/b") && !valid_line(""));
    }
}
