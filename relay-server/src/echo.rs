//! The quickstart's built-in `echo` backend: answers every request with what it received
//! (method, path, headers as JSON-ish text, then the body, streamed back).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type EchoBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Starts the echo backend on `127.0.0.1:0`; it stops with `shutdown`.
pub(crate) async fn spawn(shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = shutdown.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req| async move { Ok::<_, Infallible>(echo(req)) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn echo(req: Request<Incoming>) -> Response<EchoBody> {
    let mut head = format!("{} {}\n", req.method(), req.uri());
    for (name, value) in req.headers() {
        head.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    head.push('\n');
    let first =
        futures_util::stream::once(
            async move { Ok::<_, hyper::Error>(Frame::data(Bytes::from(head))) },
        );
    let body = StreamBody::new(first.chain(BodyStream::new(req.into_body())));
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| {
            Response::new(
                Full::new(Bytes::new())
                    .map_err(|n: Infallible| match n {})
                    .boxed(),
            )
        })
}
