//! `Write` on the wire transport without tonic's codec.
//!
//! Why: tonic's server decoder copies every request body into a buffer of its own
//! (grown to the message's size, so a fresh allocation per 1 MiB write, page faults
//! included) before prost reads it. On the wire transport the body already arrives as
//! one `Bytes`, so the request is decoded from it directly: prost takes the data as a
//! slice of that buffer, and the only copies left are the journal's and the object's.
//! Every other method, and every HTTP/2 connection, goes through tonic as before.
//!
//! The reply is the same gRPC message and status tonic would send; the `Latency` layer
//! outside this one still times the call.

use crate::service::BrickService;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use kadalu_proto::brick::brick_server::Brick;
use kadalu_proto::brick::WriteRequest;
use kadalu_proto::MAX_MESSAGE_SIZE;
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The method this layer serves itself.
pub const WRITE_PATH: &str = "/kadalu.brick.v1.Brick/Write";

/// Wraps the routes of a wire connection: `Write` is decoded here, the rest passes on.
#[derive(Clone)]
pub struct FastWrite<S> {
    inner: S,
    service: BrickService,
}

impl<S> FastWrite<S> {
    pub fn new(inner: S, service: BrickService) -> Self {
        FastWrite { inner, service }
    }
}

type Req = http::Request<tonic::body::Body>;
type Resp = http::Response<tonic::body::Body>;

impl<S> tower::Service<Req> for FastWrite<S>
where
    S: tower::Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if req.uri().path() != WRITE_PATH {
            return Box::pin(self.inner.call(req));
        }
        let service = self.service.clone();
        Box::pin(async move {
            Ok(match write(service, req).await {
                Ok(r) => r,
                Err(status) => status.into_http(),
            })
        })
    }
}

async fn write(service: BrickService, req: Req) -> Result<Resp, tonic::Status> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| tonic::Status::internal(format!("request body: {e}")))?
        .to_bytes();
    let message = WriteRequest::decode(grpc_message(body)?)
        .map_err(|e| tonic::Status::internal(format!("failed to decode Protobuf message: {e}")))?;
    let request = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(parts.headers),
        tonic::Extensions::default(),
        message,
    );
    let reply = service.write(request).await?.into_inner();
    let mut out = BytesMut::with_capacity(5 + reply.encoded_len());
    out.put_u8(0);
    out.put_u32(reply.encoded_len() as u32);
    reply
        .encode(&mut out)
        .map_err(|e| tonic::Status::internal(format!("encoding the reply: {e}")))?;
    let mut resp = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        out.freeze(),
    )));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    // The wire carries headers and trailers alike; the status is complete here.
    h.insert("grpc-status", http::HeaderValue::from_static("0"));
    Ok(resp)
}

/// The one message of a gRPC-framed unary body: an uncompressed flag, a big-endian
/// length that matches what follows, at most [`MAX_MESSAGE_SIZE`].
pub fn grpc_message(mut body: Bytes) -> Result<Bytes, tonic::Status> {
    if body.len() < 5 {
        return Err(tonic::Status::internal("truncated gRPC message"));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(tonic::Status::unimplemented(
            "compressed messages are not accepted",
        ));
    }
    if len > MAX_MESSAGE_SIZE {
        return Err(tonic::Status::out_of_range(format!(
            "message of {len} bytes is larger than {MAX_MESSAGE_SIZE}"
        )));
    }
    if body.len() != len {
        return Err(tonic::Status::internal(format!(
            "gRPC message of {} bytes where its length says {len}",
            body.len()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(flag: u8, len: u32, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(flag);
        b.put_u32(len);
        b.put_slice(payload);
        b.freeze()
    }

    #[test]
    fn a_well_framed_message_is_its_payload_without_a_copy() {
        let body = framed(0, 3, b"abc");
        let msg = grpc_message(body.clone()).unwrap();
        assert_eq!(&msg[..], b"abc");
        assert_eq!(msg.as_ptr(), body[5..].as_ptr(), "a slice of the body");
    }

    #[test]
    fn bad_frames_are_refused_with_a_status() {
        assert_eq!(
            grpc_message(framed(1, 3, b"abc")).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
        assert_eq!(
            grpc_message(framed(0, u32::MAX, b"")).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert!(grpc_message(framed(0, 4, b"abc")).is_err());
        assert!(grpc_message(framed(0, 2, b"abc")).is_err());
        assert!(grpc_message(Bytes::from_static(b"\0\0")).is_err());
    }

    proptest! {
        /// No body makes the framing check panic.
        #[test]
        fn any_body_is_a_message_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = grpc_message(Bytes::from(bytes));
        }
    }
}
