//! `hello`: the smallest useful bramble function.
//!
//! It speaks the OpenFaaS function contract: HTTP on port 8080 (or `PORT`), `GET /_/health`
//! answers `OK`, every other request gets a greeting naming the board it runs on. It uses only
//! the standard library, so it links statically and its image is one file:
//!
//! ```text
//! cargo build --release -p bramble-example-hello --target <host triple> # with RUSTFLAGS="-C target-feature=+crt-static"
//! bramble image build --binary target/<triple>/release/hello --name hello:latest --output hello.tar
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("hello: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("hello: listening on :{port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("hello: {e}");
            }
        });
    }
}

/// Answers one request (`Connection: close`).
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, text) = if path == "/_/health" {
        ("200 OK", "OK".to_owned())
    } else {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let greeting = std::env::var("MESSAGE").unwrap_or_else(|_| "Hello from bramble".into());
        let mut text = format!(
            "{greeting}! (function {} on {})\n",
            host.trim(),
            std::env::consts::ARCH
        );
        if !body.is_empty() {
            text.push_str(&format!(
                "You sent {} bytes: {}\n",
                body.len(),
                String::from_utf8_lossy(&body)
            ));
        }
        ("200 OK", text)
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}
