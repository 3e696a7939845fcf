//! Multipart parsing with a cap on the bytes the parser buffers while it looks for a part.
//!
//! axum's `Multipart` (multer 3) keeps every byte it reads until it finds the first boundary,
//! and then every byte until the blank line that ends a part's headers, and it searches the
//! whole buffer again each time more arrives. A body whose preamble or part headers never end
//! would be held whole, at a cost that grows with the square of its size. [`open`] wraps the
//! request body so that the parser gets at most [`PIECE_BYTES`] at a time, and fails the
//! request once more than [`MAX_HEAD_BYTES`] arrive while the parser produces neither a part
//! nor part data. Part data flows through unchanged: its limits are the caller's.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use futures_util::Stream;

use super::error::ApiError;

/// Maximum bytes that may arrive between two results of the parser: a part's preamble,
/// boundary and headers must fit, with the piece that completes them. 64 KiB.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Maximum bytes handed to the parser at once. 16 KiB.
pub(crate) const PIECE_BYTES: usize = 16 * 1024;

/// Counts the bytes handed to the parser since it last produced something.
#[derive(Debug, Default)]
pub(crate) struct HeadLimit {
    since_progress: AtomicUsize,
    exceeded: AtomicBool,
}

impl HeadLimit {
    /// Records that the parser produced a part or part data.
    pub(crate) fn progress(&self) {
        self.since_progress.store(0, Ordering::Relaxed);
    }

    /// Turns a parser error into the API error: 413 when the cap was hit, otherwise 413 or 400
    /// by the parser error's status.
    pub(crate) fn error(&self, error: MultipartError) -> ApiError {
        if self.exceeded.load(Ordering::Relaxed) {
            return ApiError::too_large(format!(
                "the multipart preamble or a part's headers are larger than {MAX_HEAD_BYTES} \
                 bytes; send the parts with short headers"
            ));
        }
        if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::too_large(error.body_text());
        }
        ApiError::bad_request(format!("invalid multipart body: {}", error.body_text()))
    }
}

/// Opens `request` as multipart with the [`HeadLimit`] cap; the caller reports progress on
/// the returned limit after each part and each chunk of part data.
///
/// # Errors
///
/// The extractor's rejection when the content type is not `multipart/form-data` with a
/// boundary.
pub(crate) async fn open(
    request: Request,
) -> Result<(Multipart, Arc<HeadLimit>), MultipartRejection> {
    let limit = Arc::new(HeadLimit::default());
    let (parts, body) = request.into_parts();
    let stream = PiecedBody {
        inner: body.into_data_stream(),
        rest: Bytes::new(),
        yield_next: false,
        limit: Arc::clone(&limit),
    };
    let request = Request::from_parts(parts, Body::from_stream(stream));
    let multipart = Multipart::from_request(request, &()).await?;
    Ok((multipart, limit))
}

/// The error a [`PiecedBody`] ends with when the cap is hit.
#[derive(Debug, thiserror::Error)]
#[error("more than {MAX_HEAD_BYTES} bytes arrived without a complete multipart part header")]
struct HeadTooLarge;

/// A request body cut into pieces of at most [`PIECE_BYTES`], counted against the cap.
struct PiecedBody {
    inner: BodyDataStream,
    /// The part of the last frame not handed out yet.
    rest: Bytes,
    /// Whether the next poll returns `Pending` first.
    yield_next: bool,
    limit: Arc<HeadLimit>,
}

impl Stream for PiecedBody {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // The parser reads until its stream is pending. Pausing after each piece makes it
        // handle one piece at a time, so the count below stays close to what it holds.
        if this.yield_next {
            this.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.rest.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(frame)) => this.rest = frame,
                other => return Poll::Ready(other),
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(PIECE_BYTES));
        let held = this
            .limit
            .since_progress
            .fetch_add(piece.len(), Ordering::Relaxed)
            + piece.len();
        if held > MAX_HEAD_BYTES {
            this.limit.exceeded.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(HeadTooLarge))));
        }
        this.yield_next = true;
        Poll::Ready(Some(Ok(piece)))
    }
}
