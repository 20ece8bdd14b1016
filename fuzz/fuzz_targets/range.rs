//! Range headers on a cached body: whatever a client sends, the answer is a full body, one
//! range inside the body, several, or 416, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{range_header_filter, RangeType};

fuzz_target!(|input: (u32, &[u8])| {
    let (length, range) = input;
    let length = length as usize % (1 << 20);
    let Ok(value) = http::HeaderValue::from_bytes(range) else {
        return;
    };
    let Ok(mut req) = RequestHeader::build("GET", b"/v2/a/blobs/sha256:00", None) else {
        return;
    };
    req.insert_header(http::header::RANGE, value).unwrap();
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header(http::header::CONTENT_LENGTH, length)
        .unwrap();
    // Within the body, never past it. An empty range is allowed: Pingora answers a suffix
    // range of an empty body with `0..0` (found by this target), which sends nothing.
    match range_header_filter(&req, &mut resp, Some(16)) {
        RangeType::Single(r) => assert!(r.start <= r.end && r.end <= length, "{r:?} of {length}"),
        RangeType::Multi(m) => {
            for r in &m.ranges {
                assert!(r.start <= r.end && r.end <= length, "{r:?} of {length}");
            }
        }
        RangeType::None | RangeType::Invalid => {}
    }
});
