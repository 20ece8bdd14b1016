//! Hostile clients cannot hold the mirror: request heads are bounded in size (431) and in
//! time (408), the process keeps at most `limits.max_connections` connections (503 beyond),
//! and a client that reads too slowly is cut by the send timeout and gives its download slot
//! back. Each limit shows in its metric.

mod common;

use std::time::{Duration, Instant};

use common::hub::{self, Hub};
use common::registry::noise;
use common::{free_port, Mirror};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Resident and peak resident memory of a process, bytes (`/proc/PID/status`).
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// Everything the peer sends until it closes (or errs, or 30 s pass).
async fn read_answer(s: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 200 connections each sending 1 MiB of an unfinished head; how many read their 431 (the
/// rest were reset before they could read it, which is also a refusal).
async fn flood(addr: std::net::SocketAddr) -> usize {
    let flood: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
                    .await
                    .unwrap();
                let chunk = vec![b'a'; 64 << 10];
                for _ in 0..16 {
                    // The mirror closes once the bound is passed: writes then fail.
                    if s.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                read_answer(&mut s).await
            })
        })
        .collect();
    let mut refused = 0;
    for f in flood {
        let answer = f.await.unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "{answer}"
        );
        if !answer.is_empty() {
            refused += 1;
        }
    }
    refused
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_huge_unfinished_heads_is_refused_and_costs_little_memory() {
    let admin = free_port();
    let mirror = Mirror::start(&format!("admin: {{ listen: \"127.0.0.1:{admin}\" }}\n"));
    let c = common::client(&[], mirror.addr());
    for _ in 0..20 {
        assert_eq!(
            c.get(mirror.url("/healthz")).send().await.unwrap().status(),
            200
        );
    }
    let (before, _) = rss(mirror.pid());
    // Peak RSS from here on.
    std::fs::write(format!("/proc/{}/clear_refs", mirror.pid()), "5").unwrap();

    // Other clients are served throughout.
    let bystander = {
        let (c, url) = (c.clone(), mirror.url("/healthz"));
        tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..50 {
                if c.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
                    ok += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok
        })
    };
    let refused = flood(mirror.addr()).await;
    assert_eq!(bystander.await.unwrap(), 50, "a bystander was not served");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after, peak) = rss(mirror.pid());
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; {refused} of 200 read their 431",
        mib(before),
        mib(peak),
        mib(after)
    );
    assert!(
        peak < before + (32 << 20),
        "200 huge heads took {:.1} MiB\n{}\n{:#?}",
        mib(peak - before),
        std::fs::read_to_string(format!("/proc/{}/status", mirror.pid())).unwrap(),
        common::loud_lines(&mirror.log())
            .into_iter()
            .take(20)
            .collect::<Vec<_>>()
    );
    assert!(
        after < before + (8 << 20),
        "memory not given back: {:.1} MiB more than before",
        mib(after.saturating_sub(before))
    );
    // What the allocator kept is reused, not added to: a second flood costs nothing more.
    flood(mirror.addr()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (again, _) = rss(mirror.pid());
    eprintln!("RSS after a second flood {:.1} MiB", mib(again));
    assert!(
        again < after + (4 << 20),
        "a second flood grew RSS from {:.1} to {:.1} MiB",
        mib(after),
        mib(again)
    );
    let metrics = common::get_text(&c, format!("http://127.0.0.1:{admin}/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            "pullthrough_request_heads_refused_total{reason=\"too_large\"}"
        ),
        400,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_sent_a_byte_at_a_time_is_cut_at_the_deadline() {
    let admin = free_port();
    let mirror = Mirror::start(&format!(
        "limits: {{ request_head_timeout: 2s }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n"
    ));
    // A first request on a connection, then a keep-alive one: both heads are timed.
    let mut first = TcpStream::connect(mirror.addr()).await.unwrap();
    let mut second = TcpStream::connect(mirror.addr()).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = second.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let trickle = |mut s: TcpStream| async move {
        let head = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        // A byte every 100 ms, for at most 15 s (the deadline is 2 s).
        for b in head.iter() {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(100), s.peek(&mut probe)).await {
                Ok(_) => break,
                Err(_) => continue,
            }
        }
        read_answer(&mut s).await
    };
    let (a, b) = tokio::join!(trickle(first), trickle(second));
    let took = started.elapsed();
    for answer in [a, b] {
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    }
    assert!(
        took < Duration::from_secs(10),
        "the slow heads were held {took:?}"
    );
    let c = common::client(&[], mirror.addr());
    let metrics = common::get_text(&c, format!("http://127.0.0.1:{admin}/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            "pullthrough_request_heads_refused_total{reason=\"timeout\"}"
        ),
        2,
        "{metrics}"
    );
    first = TcpStream::connect(mirror.addr()).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answer(&mut first).await.starts_with("HTTP/1.1 200"));
}

/// Waits (bounded: 30 s, a loaded machine is slow to accept) until
/// `pullthrough_connections_open` reads `n`; what it read last.
async fn open_connections_reach(c: &reqwest::Client, metrics_url: &str, n: u64) -> u64 {
    let mut open = u64::MAX;
    for _ in 0..1500 {
        open = metric(
            &common::get_text(c, metrics_url).await,
            "pullthrough_connections_open",
        );
        if open == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_get_503_until_one_closes() {
    let admin = free_port();
    let mirror = Mirror::start(&format!(
        "limits: {{ max_connections: 4 }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n"
    ));
    let c = common::client(&[], mirror.addr());
    let metrics_url = format!("http://127.0.0.1:{admin}/metrics");
    // The start-up probe's connection (`Mirror::start` waits with a connect) may still be
    // open and would take one of the four places. Connections are accepted in order, so once
    // a closing request is answered the probe was accepted before it: wait (bounded) until
    // both are gone.
    let r = reqwest::Client::builder().no_proxy().build().unwrap();
    let served = r
        .get(mirror.url("/healthz"))
        .header("connection", "close")
        .send();
    assert_eq!(served.await.unwrap().status(), 200);
    drop(r);
    let open = open_connections_reach(&c, &metrics_url, 0).await;
    assert_eq!(
        open,
        0,
        "connections still open before the test:\n{}",
        mirror.log()
    );
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(mirror.addr()).await.unwrap());
    }
    // Only once the mirror has taken all four is the next one over the cap.
    let taken = open_connections_reach(&c, &metrics_url, 4).await;
    assert_eq!(
        taken,
        4,
        "the mirror did not take the four idle connections:\n{}",
        mirror.log()
    );
    let mut over = TcpStream::connect(mirror.addr()).await.unwrap();
    let answer = read_answer(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert!(mirror.log().contains("connection limit reached"));
    let m = common::get_text(&c, &metrics_url).await;
    assert_eq!(
        metric(&m, "pullthrough_connections_refused_total"),
        1,
        "{m}"
    );
    assert_eq!(metric(&m, "pullthrough_connections_open"), 4, "{m}");
    drop(idle.pop());
    let mut served = false;
    for _ in 0..250 {
        if let Ok(r) = c.get(mirror.url("/healthz")).send().await {
            if r.status() == 200 {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a freed connection slot was not reused");
}

/// A client that reads one byte a second is cut by `send_timeout` (or `min_send_rate`) and
/// its blob download slot is free again; counted in `pullthrough_send_timeouts_total`.
async fn slow_reader_is_cut(limit: &str) {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(16 << 20, 3));
    let admin = free_port();
    let mirror = Mirror::start(&format!(
        "default_route: docker\nlimits: {{ blob_downloads_per_client: 1, {limit} }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    ));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/slow", None).await;
    let url = mirror.url(&format!("/v2/library/slow/blobs/{blob}"));
    let get = || c.get(&url).bearer_auth(&tok).send();
    // Cached first: the slow reader is served from disk, as most are.
    let body = get().await.unwrap().bytes().await.unwrap();
    assert_eq!(common::sha256(&body), blob);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(mirror.addr()).await.unwrap();
    slow.write_all(
        format!(
            "GET /v2/library/slow/blobs/{blob} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let reader = tokio::spawn(async move {
        // One byte a second, for at most 60 s.
        for _ in 0..60 {
            let mut b = [0u8; 1];
            if slow.read(&mut b).await.unwrap_or(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The slow download holds the client's one slot.
    assert_eq!(get().await.unwrap().status(), 429);
    let metrics_url = format!("http://127.0.0.1:{admin}/metrics");
    let mut cut = false;
    for _ in 0..300 {
        let m = common::get_text(&c, &metrics_url).await;
        if metric(&m, "pullthrough_send_timeouts_total") == 1 {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cut, "the slow reader was not cut within 30 s");
    let again = get().await.unwrap();
    assert_eq!(again.status(), 200, "the slot was not given back");
    assert_eq!(common::sha256(&again.bytes().await.unwrap()), blob);
    reader.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_is_cut_by_the_send_timeout() {
    slow_reader_is_cut("send_timeout: 2s").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_is_cut_by_the_minimum_send_rate() {
    slow_reader_is_cut("send_timeout: 0s, min_send_rate: 1MiB").await;
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled in by the call.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// `n` keep-alive connections opened from a thread pinned to `cpu`, each with one request
/// answered (so the mirror has seated it).
fn connections_from_cpu(
    cpu: usize,
    addr: std::net::SocketAddr,
    n: usize,
) -> Vec<std::net::TcpStream> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        // SAFETY: as above; the set names one CPU this process may run on.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(
            unsafe { libc::sched_setaffinity(0, size, &set) },
            0,
            "pin to CPU {cpu}"
        );
        (0..n)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: mirror\r\n\r\n")
                    .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut head = [0u8; 512];
                let read = s.read(&mut head).unwrap();
                assert!(
                    head[..read].starts_with(b"HTTP/1.1 200"),
                    "{:?}",
                    String::from_utf8_lossy(&head[..read])
                );
                s
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// A connection is served by the thread that stands for the CPU its packets arrive on
/// (`placement::Seats`): three connections opened from one CPU share one of the mirror's two
/// threads, three from another CPU the other thread. Pingora's own choice is random: the
/// six falling three and three by thread, twice, is a 1 in 1024 chance without the seating.
#[tokio::test(flavor = "multi_thread")]
async fn connections_arriving_on_one_cpu_share_a_thread() {
    let cpus = allowed_cpus();
    let (Some(&a), Some(&b)) = (cpus.first(), cpus.iter().find(|&&c| c % 2 != cpus[0] % 2)) else {
        eprintln!("skipped: needs two CPUs, one odd and one even, and this process has {cpus:?}");
        return;
    };
    let admin = free_port();
    let mirror = Mirror::start(&format!("admin: {{ listen: \"127.0.0.1:{admin}\" }}\n"));
    let c = common::client(&[], mirror.addr());
    let metrics_url = format!("http://127.0.0.1:{admin}/metrics");
    let by_thread = || async {
        let stats = common::get_json(&c, format!("http://127.0.0.1:{admin}/stats")).await;
        let connections = stats["connections"].clone();
        let mut loads: Vec<u64> = connections["by_thread"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        loads.sort_unstable();
        (loads, connections)
    };
    for (first, second) in [(a, b), (b, a)] {
        // The start-up probe's connection, or the last round's, may still be open.
        assert_eq!(
            open_connections_reach(&c, &metrics_url, 0).await,
            0,
            "{}",
            mirror.log()
        );
        let one = connections_from_cpu(first, mirror.addr(), 3);
        let (loads, seen) = by_thread().await;
        assert_eq!(loads, [0, 3], "three from CPU {first}: {seen}");
        let other = connections_from_cpu(second, mirror.addr(), 3);
        let (loads, seen) = by_thread().await;
        assert_eq!(loads, [3, 3], "then three from CPU {second}: {seen}");
        drop((one, other));
    }
}
