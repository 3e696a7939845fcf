//! A small HTTP server on loopback in place of a webhook such as Slack's: it records each
//! request and responds to every one with a fixed status.
//!
//! It reads one request per connection (headers, then `Content-Length` bytes of body) and
//! closes the connection after its response, which is all that Python's `urllib` needs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Limit on waiting for a request to arrive, and on reading one.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Maximum request body the server accepts, in bytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Request {
    /// Method, such as `POST`.
    pub method: String,
    /// Path with query, such as `/services/T000/B000`.
    pub path: String,
    /// Header names in lowercase, with their values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// Returns the value of the first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The running server. Dropping it stops the server.
#[derive(Debug)]
pub struct Webhook {
    port: u16,
    requests: Receiver<Result<Request, String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    /// Starts a server on `127.0.0.1` at a free port that responds to every request with
    /// `status` and `body` as plain text.
    ///
    /// # Panics
    ///
    /// When the listening socket cannot be set up.
    pub fn start(status: u16, body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener
            .local_addr()
            .expect("a bound socket has an address")
            .port();
        listener
            .set_nonblocking(true)
            .expect("making the listener non-blocking");

        let (sender, requests) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let response = response(status, body);
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || serve(&listener, &response, &sender, &stop))
        };
        Self {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Returns the URL of `path` (which starts with `/`) on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Returns the next request, waiting at most [`REQUEST_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// When no request arrives in time or a request could not be read.
    pub fn next_request(&self) -> Request {
        match self.requests.recv_timeout(REQUEST_TIMEOUT) {
            Ok(Ok(request)) => request,
            Ok(Err(problem)) => panic!("the webhook received an unreadable request: {problem}"),
            Err(RecvTimeoutError::Timeout) => panic!(
                "the webhook received no request within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!("the webhook server stopped"),
        }
    }

    /// Returns the requests received so far without waiting.
    pub fn received(&self) -> Vec<Request> {
        self.requests.try_iter().filter_map(Result::ok).collect()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until `stop` is set, handling one at a time.
fn serve(
    listener: &TcpListener,
    response: &[u8],
    sender: &Sender<Result<Request, String>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let request = handle(stream, response);
                if sender.send(request).is_err() {
                    return;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(error) => {
                let _ = sender.send(Err(format!("accept failed: {error}")));
                return;
            }
        }
    }
}

/// Reads one request from `stream` and writes `response`.
fn handle(stream: TcpStream, response: &[u8]) -> Result<Request, String> {
    stream
        .set_nonblocking(false)
        .map_err(|error| format!("making the connection blocking failed: {error}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|error| format!("setting a read timeout failed: {error}"))?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|error| format!("cloning the connection failed: {error}"))?,
    );

    let request_line = read_line(&mut reader)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();

    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("invalid header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }

    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map(|(_, value)| value.parse::<usize>())
        .transpose()
        .map_err(|error| format!("invalid Content-Length: {error}"))?
        .unwrap_or(0);
    if length > MAX_BODY_BYTES {
        return Err(format!("body of {length} bytes is over {MAX_BODY_BYTES}"));
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|error| format!("reading the body failed: {error}"))?;

    let mut stream = stream;
    stream
        .write_all(response)
        .and_then(|()| stream.flush())
        .map_err(|error| format!("writing the response failed: {error}"))?;
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Reads one CRLF-terminated line, without the line end.
fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|error| format!("reading the request failed: {error}"))?;
    if line.is_empty() {
        return Err("the connection closed before the request ended".to_owned());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
