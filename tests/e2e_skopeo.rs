//! End to end with real parts: Debian's `docker-registry` as the upstream, `skopeo` as the
//! client. An image with a 50 MiB layer and a two-platform index, pulled through the mirror
//! by Host route, default route and path prefix, gives exactly what a direct pull gives; and
//! the same against a registry with real token auth (JWTs checked by distribution itself).

mod common;

use common::registry::{pulled, Layout, Registry, TokenServer};
use common::{free_port, Mirror};

const MIB: usize = 1 << 20;

#[test]
fn skopeo_pulls_through_every_way_in() {
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::write(&work.path().join("oci"), &[50 * MIB + 123, MIB, 10_000]);
    let reg = Registry::start(None);
    layout.push(&reg.addr(), "library/img", None);

    let port = free_port();
    let mirror = Mirror::start_on(
        port,
        &format!(
            "listen: [\"127.0.0.1:{port}\", \"127.0.0.2:{port}\"]\ndefault_route: local\nroutes:\n  local: {{ upstream: \"http://{}\", host: 127.0.0.2, registry: local.test }}\n",
            reg.addr()
        ),
    );
    let out = |name: &str| work.path().join(name);
    let direct_v1 = pulled(&reg.addr(), "library/img:v1", false, &out("direct-v1"));
    let direct_multi = pulled(&reg.addr(), "library/img:multi", true, &out("direct-multi"));
    assert!(direct_v1.len() >= 5, "{direct_v1:?}");

    let ways = [
        ("host", format!("127.0.0.2:{port}"), "library/img"),
        ("default", format!("127.0.0.1:{port}"), "library/img"),
        (
            "prefix",
            format!("127.0.0.1:{port}"),
            "local.test/library/img",
        ),
    ];
    for (way, registry, image) in &ways {
        let v1 = pulled(
            registry,
            &format!("{image}:v1"),
            false,
            &out(&format!("{way}-v1")),
        );
        assert_eq!(v1, direct_v1, "{way}");
        let multi = pulled(
            registry,
            &format!("{image}:multi"),
            true,
            &out(&format!("{way}-multi")),
        );
        assert_eq!(multi, direct_multi, "{way}");
    }
    let log = mirror.log();
    for via in [
        "route local by host",
        "route local by default route",
        "route local by path prefix",
    ] {
        assert!(log.contains(via), "no {via} in the log:\n{log}");
    }
    // Normal operation logs nothing at ERROR or WARN: every pull here is a good one.
    let loud = common::loud_lines(&log);
    assert!(loud.is_empty(), "{loud:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_through_token_auth_registry() {
    let tokens = TokenServer::start().await;
    let work = tempfile::tempdir().unwrap();
    tokio::task::block_in_place(|| {
        let layout = Layout::write(&work.path().join("oci"), &[2 * MIB, 4096]);
        let reg = Registry::start(Some(&tokens.auth));
        layout.push(&reg.addr(), "team/app", Some("user:pass"));

        let mirror = Mirror::start(&format!(
            "default_route: secure\nroutes:\n  secure: {{ upstream: \"http://{}\" }}\n",
            reg.addr()
        ));
        let mirror_addr = format!("127.0.0.1:{}", mirror.port);
        let before = tokens.requests.load(std::sync::atomic::Ordering::SeqCst);
        let direct = pulled(
            &reg.addr(),
            "team/app:multi",
            true,
            &work.path().join("direct"),
        );
        let direct_tokens = tokens.requests.load(std::sync::atomic::Ordering::SeqCst) - before;
        let through = pulled(
            &mirror_addr,
            "team/app:multi",
            true,
            &work.path().join("mirror"),
        );
        assert_eq!(through, direct);
        // The mirror's realm relayed the token requests (as many as the direct pull made).
        let relayed =
            tokens.requests.load(std::sync::atomic::Ordering::SeqCst) - before - direct_tokens;
        assert!(
            relayed >= 1,
            "no token request reached the token server through the mirror"
        );
        let log = mirror.log();
        assert!(log.contains("upstream token realm is"), "{log}");
        assert!(
            log.contains("GET /v2/auth: route secure by default route"),
            "{log}"
        );
        let loud = common::loud_lines(&log);
        assert!(loud.is_empty(), "{loud:#?}");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_a_warm_image_after_the_registry_and_then_its_token_service_stop() {
    let tokens = TokenServer::start().await;
    let work = tempfile::tempdir().unwrap();
    tokio::task::block_in_place(|| {
        let layout = Layout::write(&work.path().join("oci"), &[MIB, 4096]);
        let mut reg = Registry::start(Some(&tokens.auth));
        layout.push(&reg.addr(), "team/app", Some("user:pass"));
        let mirror = Mirror::start(&format!(
            "default_route: secure\nroutes:\n  secure: {{ upstream: \"http://{}\" }}\n",
            reg.addr()
        ));
        let mirror_addr = format!("127.0.0.1:{}", mirror.port);
        let warm = pulled(
            &mirror_addr,
            "team/app:multi",
            true,
            &work.path().join("warm"),
        );
        // The mirror decides in the background whether the repository is public.
        for _ in 0..200 {
            if mirror.log().contains("team/app is public") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            mirror.log().contains("team/app is public"),
            "{}",
            mirror.log()
        );

        reg.stop();
        let offline = pulled(
            &mirror_addr,
            "team/app:multi",
            true,
            &work.path().join("off1"),
        );
        assert_eq!(offline, warm, "registry stopped");
        tokens.stop();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let offline = pulled(
            &mirror_addr,
            "team/app:multi",
            true,
            &work.path().join("off2"),
        );
        assert_eq!(offline, warm, "registry and token service stopped");
        let log = mirror.log();
        assert!(log.contains("upstream unavailable"), "{log}");
        // The second pull got its token from the mirror itself.
        assert!(log.contains("OfflineToken"), "{log}");
    });
}
