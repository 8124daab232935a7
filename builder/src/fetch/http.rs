//! HTTP(S) downloads with ureq: timeouts, retries with backoff, progress.
//!
//! Retried: connection failures, timeouts, bodies cut short, 5xx and 429 answers. Not retried: other
//! statuses (a 404 will not go away by asking again) and hash mismatches (the server answered; its bytes
//! are wrong).

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use super::{FetchError, Fetcher, Pinned};

/// One agent per process: connections are pooled across components from the same host.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The host's trust store, not a compiled-in one: sites with TLS-inspecting proxies or
            // private mirrors add their CA there, and it gets the OS's root updates.
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                    .build(),
            )
            .user_agent(concat!("ingot/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled transfer is caught per read, so big downloads on slow links still finish.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build()
            .into()
    })
}

/// What one attempt ended with.
enum Attempt<T> {
    Done(T),
    /// Worth another try; the error to report if it was the last.
    Retry(FetchError),
}

fn with_retries<T>(
    fetcher: &Fetcher,
    mut attempt: impl FnMut() -> Result<Attempt<T>, FetchError>,
) -> Result<T, FetchError> {
    let mut delays = fetcher.retry_delays.iter();
    loop {
        match attempt()? {
            Attempt::Done(v) => return Ok(v),
            Attempt::Retry(err) => match delays.next() {
                Some(delay) => {
                    if fetcher.progress {
                        eprintln!("{}, retrying in {}s", ErrorLine(&err), delay.as_secs_f32());
                    }
                    std::thread::sleep(*delay);
                }
                None => return Err(err),
            },
        }
    }
}

/// An error and its sources on one line, for the retry notice.
struct ErrorLine<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Sends the GET; maps transport errors and bad statuses.
fn get(component: &str, url: &str) -> Result<Attempt<ureq::http::Response<ureq::Body>>, FetchError> {
    let response = match agent().get(url).call() {
        Ok(r) => r,
        Err(source) => {
            return Ok(Attempt::Retry(FetchError::Network {
                component: component.to_owned(),
                url: url.to_owned(),
                source,
            }));
        }
    };
    let status = response.status().as_u16();
    match status {
        200..=299 => Ok(Attempt::Done(response)),
        404 if url.contains("/pool/") => Err(FetchError::Superseded {
            component: component.to_owned(),
            url: url.to_owned(),
        }),
        429 | 500..=599 => Ok(Attempt::Retry(FetchError::HttpStatus {
            component: component.to_owned(),
            url: url.to_owned(),
            status,
        })),
        _ => Err(FetchError::HttpStatus {
            component: component.to_owned(),
            url: url.to_owned(),
            status,
        }),
    }
}

/// Streams `url` into a new blob, hashing as it goes, and commits it if the hash matches.
pub(super) fn download(fetcher: &Fetcher, p: &Pinned, url: &str) -> Result<PathBuf, FetchError> {
    let writer = with_retries(fetcher, || {
        let response = match get(&p.component, url)? {
            Attempt::Done(r) => r,
            Attempt::Retry(e) => return Ok(Attempt::Retry(e)),
        };
        let total = response.body().content_length();
        let mut reader = response.into_body().into_reader();
        let mut writer = fetcher.cache.blob_writer()?;
        let bar = fetcher.show_bar().then(|| progress_bar(&p.component, total));
        match copy_with_progress(&mut reader, &mut writer, bar.as_ref()) {
            Ok(()) => {
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                Ok(Attempt::Done(writer))
            }
            Err(CopyError::Read(source)) => {
                if let Some(bar) = bar {
                    bar.abandon();
                }
                Ok(Attempt::Retry(FetchError::Interrupted {
                    component: p.component.clone(),
                    url: url.to_owned(),
                    source,
                }))
            }
            Err(CopyError::Write(source)) => Err(FetchError::Cache {
                path: fetcher.cache.blob_path(&p.sha256),
                source,
            }),
        }
    })?;
    writer.commit(p, url)
}

/// Downloads `url` into memory (small, unpinned files such as `InRelease`).
pub(super) fn get_bytes(fetcher: &Fetcher, what: &str, url: &str) -> Result<Vec<u8>, FetchError> {
    with_retries(fetcher, || {
        let response = match get(what, url)? {
            Attempt::Done(r) => r,
            Attempt::Retry(e) => return Ok(Attempt::Retry(e)),
        };
        let mut buf = Vec::new();
        match response.into_body().into_reader().read_to_end(&mut buf) {
            Ok(_) => Ok(Attempt::Done(buf)),
            Err(source) => Ok(Attempt::Retry(FetchError::Interrupted {
                component: what.to_owned(),
                url: url.to_owned(),
                source,
            })),
        }
    })
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy_with_progress(
    reader: &mut impl Read,
    writer: &mut impl Write,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        writer.write_all(&buf[..n]).map_err(CopyError::Write)?;
        if let Some(bar) = bar {
            bar.inc(n as u64);
        }
    }
}

/// A bar counting bytes up to `total` (a spinner without one), labelled `component`.
pub(crate) fn progress_bar(component: &str, total: Option<u64>) -> indicatif::ProgressBar {
    let bar = match total {
        Some(len) => indicatif::ProgressBar::new(len),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
    } else {
        "{msg:>16} {spinner} {bytes} {bytes_per_sec}"
    };
    // The templates are constants; should one ever fail to parse, a bar without style still works.
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(component.to_owned());
    bar
}
