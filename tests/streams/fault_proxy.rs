//! A small HTTP/1.1 proxy for fault injection in front of a local service
//! (moto, the Pub/Sub emulator, a token endpoint): each request takes the next
//! scripted fault, if any, and is otherwise forwarded unchanged. Used to prove
//! retries and backoff of the cloud streams against the real server behind.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and body; the upstream never sees the request.
    Status(u16, &'static str),
    /// Wait, then forward (a slow server).
    Delay(Duration),
    /// Close the connection without an answer.
    Drop,
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    requests: Arc<AtomicUsize>,
    authorizations: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// A proxy to `upstream` (`host:port`) on a free loopback port.
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let addr = listener.local_addr().expect("local addr");
        let faults = Arc::new(Mutex::new(VecDeque::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, r, a, s, up) = (
            faults.clone(),
            requests.clone(),
            authorizations.clone(),
            stop.clone(),
            upstream.to_string(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (f, r, a, up) = (f.clone(), r.clone(), a.clone(), up.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &f, &r, &a);
                });
            }
        });
        FaultProxy {
            addr,
            faults,
            requests,
            authorizations,
            stop,
        }
    }

    /// `http://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:port`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Queues faults for the next requests, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(faults);
    }

    /// Drops the faults not yet used: requests are forwarded again.
    pub fn clear(&self) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Faults not yet used.
    pub fn pending_faults(&self) -> usize {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The `Authorization` header of every request so far (empty when absent).
    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests received so far (faulted or forwarded).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// One request: its head (request line + headers, CRLF-terminated) and body.
fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            if k.trim().eq_ignore_ascii_case("connection") {
                continue; // replaced below
            }
        }
        head.push_str(&line);
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(Some((head, body)))
}

fn serve(
    conn: TcpStream,
    upstream: &str,
    faults: &Mutex<VecDeque<Fault>>,
    requests: &AtomicUsize,
    authorizations: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    while let Some((head, body)) = read_request(&mut reader)? {
        let auth = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        authorizations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(auth);
        requests.fetch_add(1, Ordering::SeqCst);
        let fault = faults.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        match fault {
            Some(Fault::Status(code, text)) => {
                let answer = format!(
                    "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                writer.write_all(answer.as_bytes())?;
                continue;
            }
            Some(Fault::Drop) => return Ok(()),
            Some(Fault::Delay(d)) => std::thread::sleep(d),
            None => {}
        }
        // Forward on a fresh connection that the upstream closes after answering.
        let mut up = TcpStream::connect(upstream)?;
        up.write_all(head.as_bytes())?;
        up.write_all(b"Connection: close\r\n\r\n")?;
        up.write_all(&body)?;
        // Some servers (the Pub/Sub emulator) ignore `Connection: close`: read by length.
        let answer = read_response(&mut BufReader::new(up))?;
        // The client keeps its connection: drop the upstream's `Connection: close`.
        let text_end = find(&answer, b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
        let head = String::from_utf8_lossy(&answer[..text_end])
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>();
        writer.write_all(head.trim_end_matches("\r\n").as_bytes())?;
        writer.write_all(b"\r\n\r\n")?;
        writer.write_all(&answer[text_end..])?;
    }
    Ok(())
}

/// One response: its head, then a Content-Length or chunked body, else until EOF.
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(answer);
        }
        answer.extend_from_slice(line.as_bytes());
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            }
        }
    }
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            answer.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk)?;
            answer.extend_from_slice(&chunk);
            if n == 0 {
                return Ok(answer);
            }
        }
    }
    match length {
        Some(n) => {
            let mut body = vec![0u8; n];
            reader.read_exact(&mut body)?;
            answer.extend_from_slice(&body);
        }
        None => {
            reader.read_to_end(&mut answer)?;
        }
    }
    Ok(answer)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A server that accepts TCP connections and never answers (a hung broker or
/// load balancer). Connections stay open until it is dropped.
pub struct SilentServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl SilentServer {
    /// Listens on a free loopback port.
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind silent server");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, h, s) = (accepted.clone(), held.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                h.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
        });
        SilentServer {
            addr,
            accepted,
            held,
            stop,
        }
    }

    /// `http://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:port`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
