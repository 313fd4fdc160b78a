//! A light framed transport for the Brick service: the same gRPC messages, services and
//! statuses, carried as one length-prefixed frame per request and per reply over a plain
//! TCP connection instead of HTTP/2.
//!
//! Why: with h2 every new client stream waits in `pending_open` until the connection task
//! has written its HEADERS, and gets no flow-control capacity until then, so hyper pipes
//! the body from a separate task and the DATA frame leaves in a second write, after more
//! wake-ups. On a small VM that costs more than the brick spends on a small request. Here
//! a request is one `write` from one task and its reply one `write` back.
//!
//! It plugs in underneath tonic: [`WireChannel`] is a `tower::Service` of HTTP requests,
//! so the generated `BrickClient` runs over it unchanged, and [`serve_connection`] feeds
//! requests to the generated server (a `tonic::service::Routes`). A connection starts with
//! [`MAGIC`], which lets a brick serve both transports on one port (see [`sniff`]).
//! Plain TCP only: with TLS, peers use gRPC over HTTP/2.
//!
//! Frame: `u32 length` (of the rest), `u64 request id`, then for a request `u16 path
//! length` and the path; then `u16 header count` and per header `u16` name length, name,
//! `u32` value length, value; then the gRPC-framed message body. All little-endian. A
//! reply's headers are the reply's headers and trailers merged (`grpc-status` among them).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// First bytes of every wire connection.
pub const MAGIC: &[u8; 8] = b"KADWIRE1";
/// Largest frame accepted: a message at the gRPC limit plus generous headers.
pub const MAX_FRAME: usize = crate::MAX_MESSAGE_SIZE + (1 << 16);
/// Headers per frame, and the size of one name or value.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 8 << 10;
/// Buffers per vectored write (Linux's IOV_MAX is 1024).
const MAX_IOVECS: usize = 256;
/// A body up to this size is copied behind the frame head; a larger one is sent from
/// where it is.
const INLINE_BODY: usize = 4 << 10;
/// What a connection's reader asks the socket for at least, so queued small frames
/// come in one read.
const READ_CHUNK: usize = 64 << 10;
/// Requests of one connection served at once; past this the connection is not read until
/// one finishes (as HTTP/2's concurrent-stream limit bounds a peer).
const MAX_IN_FLIGHT: usize = 512;
/// How long a new connection may take to send its first bytes.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

type StdError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("wire frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed wire frame: {0}")]
    Malformed(&'static str),
    #[error("not a kadalu wire connection (bad magic)")]
    BadMagic,
    #[error("wire connection to {addr}: {detail}")]
    Connection { addr: String, detail: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: u64,
    /// The gRPC method path (`/kadalu.brick.v1.Brick/Lookup`); empty in replies.
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

impl Frame {
    /// The frame with its length prefix, ready to write: the head, and the body as it is
    /// (a 1 MiB write's data is not copied again to sit behind a few header bytes). A
    /// small body is folded into the head, so a small frame stays one buffer.
    pub fn encode(&self, request: bool) -> Outgoing {
        let inline = self.body.len() <= INLINE_BODY;
        let cap = 32
            + self.path.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| 6 + k.len() + v.len())
                .sum::<usize>()
            + if inline { self.body.len() } else { 0 };
        let mut b = BytesMut::with_capacity(cap);
        b.put_u32_le(0);
        b.put_u64_le(self.id);
        if request {
            b.put_u16_le(self.path.len() as u16);
            b.put_slice(self.path.as_bytes());
        }
        b.put_u16_le(self.headers.len() as u16);
        for (k, v) in &self.headers {
            b.put_u16_le(k.len() as u16);
            b.put_slice(k.as_bytes());
            b.put_u32_le(v.len() as u32);
            b.put_slice(v);
        }
        let body = match inline {
            true => {
                b.put_slice(&self.body);
                Bytes::new()
            }
            false => self.body.clone(),
        };
        let len = (b.len() - 4 + body.len()) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        Outgoing {
            head: b.freeze(),
            body,
        }
    }

    /// Decodes a frame without its length prefix. Every length is checked against what
    /// is left, so no input makes this panic or over-allocate.
    pub fn decode(mut buf: Bytes, request: bool) -> Result<Frame, WireError> {
        fn need(buf: &Bytes, n: usize) -> Result<(), WireError> {
            match buf.remaining() >= n {
                true => Ok(()),
                false => Err(WireError::Malformed("truncated")),
            }
        }
        need(&buf, 8)?;
        let id = buf.get_u64_le();
        let path = if request {
            need(&buf, 2)?;
            let n = buf.get_u16_le() as usize;
            need(&buf, n)?;
            String::from_utf8(buf.split_to(n).to_vec())
                .map_err(|_| WireError::Malformed("path is not UTF-8"))?
        } else {
            String::new()
        };
        need(&buf, 2)?;
        let count = buf.get_u16_le() as usize;
        if count > MAX_HEADERS {
            return Err(WireError::Malformed("too many headers"));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            need(&buf, 2)?;
            let kn = buf.get_u16_le() as usize;
            need(&buf, kn)?;
            let k = String::from_utf8(buf.split_to(kn).to_vec())
                .map_err(|_| WireError::Malformed("header name is not UTF-8"))?;
            need(&buf, 4)?;
            let vn = buf.get_u32_le() as usize;
            if vn > MAX_HEADER_BYTES || kn > MAX_HEADER_BYTES {
                return Err(WireError::Malformed("header too large"));
            }
            need(&buf, vn)?;
            headers.push((k, buf.split_to(vn).to_vec()));
        }
        Ok(Frame {
            id,
            path,
            headers,
            body: buf,
        })
    }
}

/// An encoded frame: `head` (length prefix, id, path, headers, and a small body) and then
/// `body` (a large one, possibly empty), sent back to back.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub head: Bytes,
    pub body: Bytes,
}

impl Outgoing {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame as one buffer (tests, and callers that write it by hand).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.len());
        b.put_slice(&self.head);
        b.put_slice(&self.body);
        b.freeze()
    }
}

/// Reads frames off a stream through one buffer: small frames queued by the peer arrive
/// in one `read` instead of two each, and a large frame is read into memory reserved for
/// it without being zeroed first.
pub struct FrameReader<R> {
    r: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(r: R) -> FrameReader<R> {
        FrameReader {
            r,
            buf: BytesMut::new(),
        }
    }

    /// The next frame's bytes (without the prefix); `None` at a clean end of stream. A
    /// length over [`MAX_FRAME`] is refused before anything is reserved for it.
    pub async fn next(&mut self) -> Result<Option<Bytes>, WireError> {
        loop {
            let want = match self.buf.get(..4) {
                Some(p) => {
                    let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
                    if len > MAX_FRAME {
                        return Err(WireError::TooLarge(len));
                    }
                    if self.buf.len() >= 4 + len {
                        self.buf.advance(4);
                        return Ok(Some(self.buf.split_to(len).freeze()));
                    }
                    4 + len
                }
                None => 4,
            };
            // Room for the rest of this frame, and while at it for a few small ones after.
            self.buf.reserve((want - self.buf.len()).max(READ_CHUNK));
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                };
            }
        }
    }
}

/// Reads one frame's bytes (without the prefix); `None` at a clean end of stream. For a
/// single frame; a connection reads through a [`FrameReader`].
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<Bytes>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let left = len - buf.len();
        if r.read_buf(&mut (&mut buf).limit(left)).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(Some(buf.freeze()))
}

/// Sends one connection's frames, in the order they are handed over.
///
/// Whoever hands over a frame while nothing is queued writes it at once, from its own
/// thread: a request leaves from the thread that made it (a FUSE thread), a reply from
/// the task that computed it, with no wake-up of another task or thread on the way.
/// What the socket does not take at once stays queued, and the writer task
/// ([`FrameSender::run`]) sends it, batched, when the socket has room; frames handed
/// over meanwhile queue behind it, so order holds.
struct FrameSender {
    sock: tokio::net::tcp::OwnedWriteHalf,
    state: Mutex<SendState>,
    /// Something was queued, or the sender is closing.
    more: tokio::sync::Notify,
}

#[derive(Default)]
struct SendState {
    /// Bytes not written yet, in order (a frame's head and body as they are).
    queue: VecDeque<Bytes>,
    /// A write failed: the connection is done.
    failed: bool,
    /// No more frames come: the writer ends once the queue is out.
    closing: bool,
}

/// The socket failed; no frame can be sent on this connection any more.
#[derive(Debug)]
struct SendFailed;

impl FrameSender {
    fn new(sock: tokio::net::tcp::OwnedWriteHalf) -> Arc<FrameSender> {
        Arc::new(FrameSender {
            sock,
            state: Mutex::new(SendState::default()),
            more: tokio::sync::Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SendState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `o` after every frame handed over before it.
    fn send(&self, o: Outgoing) -> Result<(), SendFailed> {
        let mut st = self.state();
        if st.failed {
            return Err(SendFailed);
        }
        let idle = st.queue.is_empty();
        push(&mut st.queue, o);
        if !idle {
            // The writer task has been told already.
            return Ok(());
        }
        st.write_out(&self.sock)?;
        if !st.queue.is_empty() {
            self.more.notify_one();
        }
        Ok(())
    }

    /// Lets the writer end once what is queued is out.
    fn close(&self) {
        self.state().closing = true;
        self.more.notify_one();
    }

    /// The writer task: sends what [`FrameSender::send`] could not, as the socket takes it.
    async fn run(self: Arc<Self>) {
        loop {
            self.more.notified().await;
            loop {
                {
                    let mut st = self.state();
                    if st.write_out(&self.sock).is_err() {
                        return;
                    }
                    if st.queue.is_empty() {
                        match st.closing {
                            true => return,
                            false => break,
                        }
                    }
                }
                if self.sock.writable().await.is_err() {
                    self.state().break_off();
                    return;
                }
            }
        }
    }
}

impl SendState {
    /// Writes what the socket takes now; a failed write ends the connection.
    fn write_out(&mut self, sock: &tokio::net::tcp::OwnedWriteHalf) -> Result<(), SendFailed> {
        if self.failed {
            return Err(SendFailed);
        }
        write_some(sock, &mut self.queue).map_err(|_| {
            self.break_off();
            SendFailed
        })
    }

    fn break_off(&mut self) {
        self.failed = true;
        self.queue.clear();
    }
}

fn push(queue: &mut VecDeque<Bytes>, o: Outgoing) {
    queue.push_back(o.head);
    if !o.body.is_empty() {
        queue.push_back(o.body);
    }
}

/// Writes from the front of `queue`, as many buffers per `writev` as it may, until the
/// queue is empty or the socket is full (`Ok` either way).
fn write_some(
    sock: &tokio::net::tcp::OwnedWriteHalf,
    queue: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !queue.is_empty() {
        let slices: Vec<std::io::IoSlice<'_>> = queue
            .iter()
            .take(MAX_IOVECS)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = match sock.try_write_vectored(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while let Some(front) = queue.front_mut() {
            if n < front.len() {
                front.advance(n);
                break;
            }
            n -= front.len();
            queue.pop_front();
        }
    }
    Ok(())
}

/// Headers that HTTP/2 needs and the wire does not carry (they are restored on arrival).
fn carried(name: &str) -> bool {
    !matches!(name, "content-type" | "te" | "user-agent")
}

fn header_list(maps: &[&http::HeaderMap]) -> Vec<(String, Vec<u8>)> {
    maps.iter()
        .flat_map(|m| m.iter())
        .filter(|(k, _)| carried(k.as_str()))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn header_map(list: &[(String, Vec<u8>)]) -> http::HeaderMap {
    let mut m = http::HeaderMap::new();
    for (k, v) in list {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            m.append(k, v);
        }
    }
    m
}

/// A reply body: the message, then the status as trailers.
struct ReplyBody {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take().filter(|d| !d.is_empty()) {
            return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(http_body::Frame::trailers(t))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// One open connection of a client.
struct Conn {
    sender: Arc<FrameSender>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    closed: AtomicBool,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Conn {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Frame>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct ClientInner {
    addr: String,
    connect_timeout: Duration,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
}

/// The client side: a `tower::Service` for tonic's generated clients. Connects lazily,
/// and again after the connection broke; calls in flight on a broken connection fail
/// (the caller's retry policy decides what next).
#[derive(Clone)]
pub struct WireChannel {
    inner: Arc<ClientInner>,
}

impl WireChannel {
    /// A channel to `addr` (`host:port`, or a URI whose scheme is ignored).
    pub fn new(addr: &str, connect_timeout: Duration) -> WireChannel {
        let addr = addr.split_once("://").map_or(addr, |(_, a)| a).to_string();
        WireChannel {
            inner: Arc::new(ClientInner {
                addr,
                connect_timeout,
                conn: tokio::sync::Mutex::new(None),
                next_id: AtomicU64::new(1),
            }),
        }
    }
}

impl ClientInner {
    fn fail(&self, detail: impl Into<String>) -> WireError {
        WireError::Connection {
            addr: self.addr.clone(),
            detail: detail.into(),
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, WireError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.closed.load(Ordering::Acquire)) {
            return Ok(c.clone());
        }
        let mut stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| self.fail("connect timed out"))?
            .map_err(|e| self.fail(e.to_string()))?;
        stream.set_nodelay(true)?;
        stream.write_all(MAGIC).await?;
        let (r, w) = stream.into_split();
        let mut r = FrameReader::new(r);
        let sender = FrameSender::new(w);
        let conn = Arc::new_cyclic(|weak: &std::sync::Weak<Conn>| {
            let weak = weak.clone();
            let reader = tokio::spawn(async move {
                loop {
                    let frame = match r.next().await {
                        Ok(Some(b)) => Frame::decode(b, false),
                        _ => break,
                    };
                    let Some(conn) = weak.upgrade() else { return };
                    match frame {
                        Ok(f) => {
                            if let Some(waiter) = conn.pending().remove(&f.id) {
                                let _ = waiter.send(f);
                            }
                        }
                        Err(_) => break,
                    }
                }
                if let Some(conn) = weak.upgrade() {
                    conn.closed.store(true, Ordering::Release);
                    // Dropping the senders fails every call still waiting.
                    conn.pending().clear();
                }
            });
            Conn {
                sender: sender.clone(),
                pending: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                reader,
                writer: tokio::spawn(sender.run()),
            }
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn call(
        &self,
        req: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, StdError> {
        use http_body_util::BodyExt;
        let path = req.uri().path().to_string();
        let headers = header_list(&[req.headers()]);
        let body = req.into_body().collect().await?.to_bytes();
        let conn = self.connection().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending().insert(id, tx);
        let frame = Frame {
            id,
            path,
            headers,
            body,
        };
        if conn.sender.send(frame.encode(true)).is_err() {
            conn.pending().remove(&id);
            conn.closed.store(true, Ordering::Release);
            return Err(self.fail("connection closed").into());
        }
        // Dropped by the caller's deadline: the entry must not outlive the call.
        struct Forget<'a>(&'a Conn, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.pending().remove(&self.1);
            }
        }
        let _forget = Forget(&conn, id);
        let reply = rx.await.map_err(|_| self.fail("connection closed"))?;
        let mut resp = http::Response::new(tonic::body::Body::new(ReplyBody {
            data: Some(reply.body),
            trailers: Some(header_map(&reply.headers)),
        }));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok(resp)
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for WireChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = StdError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.call(req).await })
    }
}

/// Whether a new connection speaks the wire (true: its magic has been consumed) or
/// something else (false: nothing consumed; hand it to the HTTP/2 server). Only the
/// first byte is needed to tell: HTTP/2 starts with `P`, TLS with 0x16.
pub async fn sniff(stream: &mut TcpStream) -> Result<bool, WireError> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(SNIFF_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| WireError::Malformed("no bytes within the sniff timeout"))??;
    if n == 0 || first[0] != MAGIC[0] {
        return Ok(false);
    }
    let mut magic = [0u8; 8];
    tokio::time::timeout(SNIFF_TIMEOUT, stream.read_exact(&mut magic))
        .await
        .map_err(|_| WireError::Malformed("no magic within the sniff timeout"))??;
    match &magic == MAGIC {
        true => Ok(true),
        false => Err(WireError::BadMagic),
    }
}

/// What serves decoded requests: tonic's generated routes, possibly wrapped in layers.
pub trait WireService:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S> WireService for S where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// Serves wire requests of one connection (its magic already read) with `routes`, each
/// request in its own task, until the peer closes or sends something malformed.
pub async fn serve_connection(stream: TcpStream, routes: impl WireService) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut r = FrameReader::new(r);
    let sender = FrameSender::new(w);
    let writer = tokio::spawn(sender.clone().run());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let frame = match r.next().await {
            Ok(Some(b)) => match Frame::decode(b, true) {
                Ok(f) => f,
                Err(_) => break,
            },
            _ => break,
        };
        let routes = routes.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let reply = handle(routes, frame).await;
            let _ = sender.send(reply.encode(false));
            drop(slot);
        });
    }
    // Requests still running reply first; then what is queued goes out.
    let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
    sender.close();
    let _ = writer.await;
}

async fn handle(routes: impl WireService, f: Frame) -> Frame {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let id = f.id;
    let mut req = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(f.body)));
    *req.method_mut() = http::Method::POST;
    *req.version_mut() = http::Version::HTTP_2;
    let status_only = |s: tonic::Status| Frame {
        id,
        path: String::new(),
        headers: {
            let mut m = http::HeaderMap::new();
            let _ = s.add_header(&mut m);
            header_list(&[&m])
        },
        body: Bytes::new(),
    };
    match http::Uri::builder().path_and_query(f.path.as_str()).build() {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => return status_only(tonic::Status::unimplemented("bad method path")),
    }
    *req.headers_mut() = header_map(&f.headers);
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    req.headers_mut()
        .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let resp = match routes.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return status_only(tonic::Status::internal(format!("reply body: {e}"))),
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    Frame {
        id,
        path: String::new(),
        headers: header_list(&[&parts.headers, &trailers]),
        body: collected.to_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames_round_trip(id: u64, path in "/[a-zA-Z./]{0,40}", body in proptest::collection::vec(any::<u8>(), 0..300),
                             headers in proptest::collection::vec(("[a-z-]{1,12}", proptest::collection::vec(any::<u8>(), 0..40)), 0..6),
                             request: bool) {
            let f = Frame { id, path: if request { path } else { String::new() }, headers, body: Bytes::from(body) };
            let enc = f.encode(request).to_bytes();
            let len = u32::from_le_bytes(enc[..4].try_into().unwrap()) as usize;
            prop_assert_eq!(len, enc.len() - 4);
            prop_assert_eq!(Frame::decode(enc.slice(4..), request).unwrap(), f);
        }

        /// Any bytes decode to a frame or an error, never a panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), request: bool) {
            let _ = Frame::decode(Bytes::from(bytes), request);
        }
    }

    #[test]
    fn truncated_frames_are_errors() {
        let f = Frame {
            id: 7,
            path: "/a/B".into(),
            headers: vec![("x-errno".into(), b"2".to_vec())],
            body: Bytes::from_static(b"hello"),
        };
        let enc = f.encode(true).to_bytes().slice(4..);
        for cut in 0..enc.len() - 5 {
            assert!(
                Frame::decode(enc.slice(..cut), true).is_err(),
                "cut at {cut}"
            );
        }
    }

    fn frame_with_body(id: u64, body_len: usize) -> Frame {
        Frame {
            id,
            path: "/kadalu.brick.v1.Brick/Write".into(),
            headers: vec![("grpc-timeout".into(), b"5S".to_vec())],
            body: Bytes::from((0..body_len).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
        }
    }

    proptest! {
        /// Frames of any sizes, written back to back and read in arbitrary pieces, come
        /// out whole and in order; a large body travels as its own buffer.
        #[test]
        fn frame_reader_splits_a_stream(sizes in proptest::collection::vec(0usize..20_000, 1..12),
                                        piece in 1usize..9000) {
            let frames: Vec<Frame> = sizes.iter().enumerate().map(|(i, &n)| frame_with_body(i as u64, n)).collect();
            let mut stream = Vec::new();
            for f in &frames {
                let o = f.encode(true);
                prop_assert_eq!(o.body.is_empty(), f.body.len() <= INLINE_BODY);
                stream.extend_from_slice(&o.to_bytes());
            }
            let (mut tx, rx) = tokio::io::duplex(piece);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let got = rt.block_on(async move {
                let writer = tokio::spawn(async move {
                    for c in stream.chunks(piece) {
                        tx.write_all(c).await.unwrap();
                    }
                });
                let mut r = FrameReader::new(rx);
                let mut got = Vec::new();
                while let Some(b) = r.next().await.unwrap() {
                    got.push(Frame::decode(b, true).unwrap());
                }
                writer.await.unwrap();
                got
            });
            prop_assert_eq!(got, frames);
        }
    }

    #[tokio::test]
    async fn vectored_writer_sends_every_buffer_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_r, w) = client.into_split();
        let sender = FrameSender::new(w);
        let writer = tokio::spawn(sender.clone().run());
        // More buffers than one writev takes, and more bytes than the socket takes at
        // once: some frames go out directly, the rest from the writer task.
        let frames: Vec<Frame> = (0..600u64)
            .map(|i| {
                frame_with_body(
                    i,
                    if i % 50 == 0 {
                        300_000
                    } else {
                        (i as usize * 37) % 6000
                    },
                )
            })
            .collect();
        for f in &frames {
            sender.send(f.encode(false)).unwrap();
        }
        sender.close();
        drop(sender);
        let mut r = FrameReader::new(server);
        for f in &frames {
            let got = Frame::decode(r.next().await.unwrap().unwrap(), false).unwrap();
            assert_eq!(got.id, f.id);
            assert_eq!(got.body, f.body);
        }
        writer.await.unwrap();
        assert!(
            r.next().await.unwrap().is_none(),
            "clean end after the last frame"
        );
    }

    #[tokio::test]
    async fn frame_reader_refuses_oversize_and_torn_frames() {
        let mut over = ((MAX_FRAME as u32) + 1).to_le_bytes().to_vec();
        over.extend_from_slice(&[0; 16]);
        assert!(matches!(
            FrameReader::new(&over[..]).next().await,
            Err(WireError::TooLarge(_))
        ));
        let whole = frame_with_body(3, 10).encode(true).to_bytes();
        for cut in 1..whole.len() {
            assert!(
                FrameReader::new(&whole[..cut]).next().await.is_err(),
                "cut at {cut}"
            );
        }
        assert!(FrameReader::new(&[][..]).next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversize_length_prefix_is_refused_before_allocating() {
        let mut input: &[u8] = &((MAX_FRAME as u32) + 1).to_le_bytes();
        assert!(matches!(
            read_frame(&mut input).await,
            Err(WireError::TooLarge(_))
        ));
    }
}
