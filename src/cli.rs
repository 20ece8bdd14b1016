//! The operators' commands: `pullthrough prefetch` and `pullthrough cache ls|du|purge`. Each
//! asks the running daemon through its admin listener (found in the config file) and shows
//! the answer: the daemon does the work.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;

use crate::admin::prefetch::{Event, Kind, State};

/// The operators' commands (the daemon itself runs with Pingora's own flags).
#[derive(Debug, Parser)]
#[command(name = "pullthrough", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The daemon's config file: its `admin.listen` is asked.
    #[arg(short = 'c', long = "conf")]
    conf: PathBuf,
    /// The admin listener to ask instead of the config's (`ip:port`).
    #[arg(long)]
    admin: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetches images into the daemon's cache, as a client pull would.
    Prefetch {
        #[command(flatten)]
        target: Target,
        /// Only these platforms of a multi-platform image (`os/arch[/variant]`; repeatable).
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// Also the images listed in this file, one per line (`#` starts a comment).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Blobs fetched at once.
        #[arg(long)]
        concurrency: Option<usize>,
        /// One JSON object per event, as the daemon sends them.
        #[arg(long)]
        json: bool,
        /// `REGISTRY/REPOSITORY[:TAG|@DIGEST]`; Docker Hub short names mean docker.io.
        images: Vec<String>,
    },
    /// Looks at or purges the daemon's cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Debug, Subcommand)]
enum CacheAction {
    /// Lists entries (kind, repository, tag, digest, size, age, last read).
    Ls {
        #[command(flatten)]
        target: Target,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Only entries filled through matching repositories (`docker.io/library/*`).
        repository: Option<String>,
    },
    /// Entries and bytes by registry and kind.
    Du {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Removes an image (`REGISTRY/REPOSITORY:TAG` or `@DIGEST`), what repositories
    /// brought in (a name or glob), or a digest everywhere.
    Purge {
        #[command(flatten)]
        target: Target,
        what: String,
    },
}

/// Whether `args` (without the program name) name one of these commands.
pub fn is_command(first: Option<&str>) -> bool {
    matches!(first, Some("prefetch" | "cache"))
}

/// Runs a command; the exit status says whether it all succeeded.
pub fn run(args: impl IntoIterator<Item = String>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start: {e}")),
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(message) => fail(message),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("pullthrough: {message}");
    ExitCode::FAILURE
}

async fn dispatch(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Prefetch {
            target,
            platforms,
            file,
            concurrency,
            json,
            mut images,
        } => {
            if let Some(list) = file {
                images.extend(read_list(&list)?);
            }
            if images.is_empty() {
                return Err("prefetch: name at least one image (or --file)".into());
            }
            let admin = Admin::new(&target)?;
            let body = serde_json::json!({
                "images": images,
                "platforms": platforms,
                "concurrency": concurrency,
            });
            prefetch(&admin, &body, images.len(), json).await
        }
        Command::Cache { action } => match action {
            CacheAction::Ls {
                target,
                json,
                repository,
            } => {
                let admin = Admin::new(&target)?;
                list(&admin, repository.as_deref(), json).await
            }
            CacheAction::Du { target, json } => {
                let admin = Admin::new(&target)?;
                let answer = admin.get_json("/cache/usage").await?;
                if json {
                    println!("{answer}");
                } else {
                    print_usage(&answer);
                }
                Ok(ExitCode::SUCCESS)
            }
            CacheAction::Purge { target, what } => {
                let admin = Admin::new(&target)?;
                let answer = admin
                    .post_json("/cache/purge", &serde_json::json!({ "target": what }))
                    .await?;
                println!(
                    "purged {} entries, {} bytes{}",
                    answer["entries"],
                    answer["bytes"],
                    match answer["skipped"].as_u64() {
                        Some(n) if n > 0 => format!(" ({n} replaced by a fill meanwhile, left)"),
                        _ => String::new(),
                    }
                );
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

/// The images a `--file` lists.
fn read_list(path: &Path) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut images = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        let line = line.split('#').next().unwrap_or("").trim();
        if !line.is_empty() {
            images.push(line.to_owned());
        }
    }
    Ok(images)
}

/// The admin listener of a running daemon.
struct Admin {
    base: String,
    client: reqwest::Client,
}

impl Admin {
    fn new(target: &Target) -> Result<Admin, String> {
        let addr = match target.admin {
            Some(a) => a,
            None => admin_listen(&target.conf)?,
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Admin {
            base: format!("http://{}", crate::admin::reachable(addr)),
            client,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> String {
        format!(
            "the daemon's admin listener at {} did not answer: {e}",
            self.base
        )
    }

    /// A request's answer, or the daemon's `{"error": ...}` as the message.
    async fn checked(&self, response: reqwest::Response) -> Result<reqwest::Response, String> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        Err(format!("the daemon refused ({status}): {}", message.trim()))
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.checked(response).await
    }

    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, String> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.checked(response).await
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        self.get(path)
            .await?
            .json()
            .await
            .map_err(|e| format!("unreadable answer: {e}"))
    }

    async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.post(path, body)
            .await?
            .json()
            .await
            .map_err(|e| format!("unreadable answer: {e}"))
    }
}

/// `admin.listen` of a config file, read leniently: the command needs nothing else of it (and
/// may not be allowed to read the certificates or secrets the rest names).
fn admin_listen(conf: &Path) -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string(conf).map_err(|e| format!("{}: {e}", conf.display()))?;
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", conf.display()))?;
    let listen = yaml
        .get("admin")
        .and_then(|a| a.get("listen"))
        .and_then(|l| l.as_str())
        .ok_or_else(|| {
            format!(
                "{} has no admin.listen: the commands talk to the daemon through it (or pass --admin)",
                conf.display()
            )
        })?;
    listen
        .parse()
        .map_err(|_| format!("{}: admin.listen {listen:?} is not ip:port", conf.display()))
}

/// Reads a response body line by line.
async fn each_line(
    response: reqwest::Response,
    mut on_line: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut stream = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("the daemon's answer was cut: {e}"))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = line.trim_ascii();
            if !line.is_empty() {
                on_line(line)?;
            }
        }
    }
    if !pending.trim_ascii().is_empty() {
        on_line(pending.trim_ascii())?;
    }
    Ok(())
}

async fn prefetch(
    admin: &Admin,
    body: &serde_json::Value,
    images: usize,
    json: bool,
) -> Result<ExitCode, String> {
    let response = admin.post("/prefetch", body).await?;
    let mut view = if json {
        View::Json
    } else if std::io::stderr().is_terminal() {
        View::Bars(Bars::new())
    } else {
        View::Lines
    };
    let (mut succeeded, mut failed) = (0usize, Vec::new());
    each_line(response, |line| {
        let event: Event = serde_json::from_slice(line)
            .map_err(|e| format!("unreadable event from the daemon: {e}"))?;
        if event.kind == Kind::Image {
            match event.state {
                State::Done | State::Cached => succeeded += 1,
                State::Failed => failed.push(format!(
                    "{}: {}",
                    event.image,
                    event.error.as_deref().unwrap_or("failed")
                )),
                _ => {}
            }
        }
        view.show(line, &event);
        Ok(())
    })
    .await?;
    view.finish();
    for failure in &failed {
        eprintln!("pullthrough: prefetch {failure}");
    }
    if succeeded == images && failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        if failed.is_empty() {
            eprintln!("pullthrough: prefetch ended after {succeeded} of {images} images");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// How prefetch events are shown.
enum View {
    Json,
    Lines,
    Bars(Bars),
}

impl View {
    fn show(&mut self, line: &[u8], event: &Event) {
        match self {
            View::Json => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line);
                let _ = out.write_all(b"\n");
            }
            View::Lines => println!("{}", describe(event)),
            View::Bars(bars) => bars.show(event),
        }
    }

    fn finish(&mut self) {
        if let View::Bars(bars) = self {
            bars.overall.finish();
        }
    }
}

/// One event as a plain line.
fn describe(e: &Event) -> String {
    let kind = serde_json::to_value(e.kind).ok();
    let state = serde_json::to_value(e.state).ok();
    let mut text = format!(
        "{} {} {}",
        e.image,
        kind.as_ref().and_then(|k| k.as_str()).unwrap_or("?"),
        state.as_ref().and_then(|s| s.as_str()).unwrap_or("?"),
    );
    if let Some(d) = &e.digest {
        text.push(' ');
        text.push_str(d);
    }
    match (e.bytes, e.size) {
        (0, None) => {}
        (b, Some(s)) => text.push_str(&format!(" {b}/{s} bytes")),
        (b, None) => text.push_str(&format!(" {b} bytes")),
    }
    if let Some(error) = &e.error {
        text.push_str(": ");
        text.push_str(error);
    }
    text
}

/// Progress bars on a terminal: one per blob being fetched and one for everything.
struct Bars {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    blobs: std::collections::HashMap<String, indicatif::ProgressBar>,
}

impl Bars {
    fn new() -> Bars {
        let multi = indicatif::MultiProgress::new();
        let overall = multi.add(indicatif::ProgressBar::new(0));
        overall.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_prefix("total");
        Bars {
            multi,
            overall,
            blobs: Default::default(),
        }
    }

    fn show(&mut self, e: &Event) {
        let digest = e.digest.clone().unwrap_or_default();
        let short: String = digest.chars().skip(7).take(12).collect();
        match (e.kind, e.state) {
            (Kind::Blob, State::Queued) => {
                let size = e.size.unwrap_or(0);
                self.overall.inc_length(size);
                let bar = self.multi.add(indicatif::ProgressBar::new(size));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(short);
                bar.set_message("queued");
                self.blobs.insert(digest, bar);
            }
            (Kind::Blob, state) => {
                let Some(bar) = self.blobs.get(&digest) else {
                    return;
                };
                let before = bar.position();
                let now = match state {
                    State::Cached | State::Done => bar.length().unwrap_or(e.bytes),
                    _ => e.bytes,
                };
                bar.set_position(now);
                self.overall.inc(now.saturating_sub(before));
                match state {
                    State::Fetching => bar.set_message("fetching"),
                    State::Cached => bar.finish_with_message("cached"),
                    State::Done => bar.finish_with_message("done"),
                    State::Failed => {
                        bar.abandon_with_message(e.error.clone().unwrap_or_else(|| "failed".into()))
                    }
                    State::Queued => {}
                }
            }
            (Kind::Image, State::Done | State::Cached | State::Failed) => {
                let _ = self.multi.println(describe(e));
            }
            _ => {}
        }
    }
}

/// `cache ls`.
async fn list(admin: &Admin, repository: Option<&str>, json: bool) -> Result<ExitCode, String> {
    let path = match repository {
        Some(glob) => format!(
            "/cache/entries?{}",
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("repository", glob)
                .finish()
        ),
        None => "/cache/entries".to_owned(),
    };
    let response = admin.get(&path).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = std::io::stdout().lock();
    if !json {
        let _ = writeln!(
            out,
            "{:<8} {:<40} {:<16} {:<19} {:>12} {:>8} {:>9}",
            "KIND", "REPOSITORY", "TAG", "DIGEST", "SIZE", "AGE", "LAST READ"
        );
    }
    each_line(response, |line| {
        if json {
            let _ = out.write_all(line);
            let _ = out.write_all(b"\n");
            return Ok(());
        }
        let e: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("unreadable entry: {e}"))?;
        let ago = |t: Option<u64>| match t {
            Some(t) => humantime::format_duration(Duration::from_secs(now.saturating_sub(t)))
                .to_string()
                .split(' ')
                .next()
                .unwrap_or("")
                .to_owned(),
            None => "-".into(),
        };
        let repository = match e["repository"].as_str() {
            Some(r) => format!("{}/{r}", e["registry"].as_str().unwrap_or("?")),
            None => format!("{}/?", e["registry"].as_str().unwrap_or("?")),
        };
        let digest: String = e["digest"]
            .as_str()
            .unwrap_or("-")
            .chars()
            .take(19)
            .collect();
        let _ = writeln!(
            out,
            "{:<8} {:<40} {:<16} {:<19} {:>12} {:>8} {:>9}",
            e["kind"].as_str().unwrap_or("?"),
            repository,
            e["tag"].as_str().unwrap_or("-"),
            digest,
            e["size"].as_u64().unwrap_or(0),
            ago(e["created"].as_u64()),
            ago(e["last_read"].as_u64()),
        );
        Ok(())
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

fn print_usage(u: &serde_json::Value) {
    let max = u["max_size_bytes"].as_u64().unwrap_or(0);
    let bytes = u["bytes"].as_u64().unwrap_or(0);
    println!(
        "{} entries, {} of {} ({:.1}%)",
        u["entries"],
        bytesize::ByteSize(bytes),
        bytesize::ByteSize(max),
        if max > 0 {
            bytes as f64 * 100.0 / max as f64
        } else {
            0.0
        }
    );
    if let Some(by) = u["by_registry_and_kind"].as_object() {
        for (name, t) in by {
            println!(
                "  {name:<32} {:>8} entries {:>12}",
                t["entries"],
                bytesize::ByteSize(t["bytes"].as_u64().unwrap_or(0)).to_string()
            );
        }
    }
}
