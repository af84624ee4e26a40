//! Property tests of the gateway's input parsing: arbitrary paths, batch
//! markers and chunks never panic, and a reassembled batch never exceeds
//! its limit. Deterministic (fixed seed) and bounded, so CI runs them.

use crate::batch::Reassembler;
use crate::path;

/// Seeded inputs (fastrand's wyrand), so every run tests the same ones.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    fn byte(&mut self) -> u8 {
        self.0.u8(..)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n.max(1))
    }

    fn text(&mut self, len: usize, alphabet: &[u8]) -> String {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}

const PATH_CHARS: &[u8] = b"/abc-_.%0123456789ABCDEFparties";
const JSON_CHARS: &[u8] = b"{}[]\":,0123456789-+.eEabcdefghijklmnopqrstuvwxyz idstartendsizecount";

#[test]
fn arbitrary_paths_parse_or_fail_cleanly() {
    let mut rng = Rng::new(0x5eed_1234_5678_9abc);
    for _ in 0..20_000 {
        let len = rng.below(80);
        let text = rng.text(len, PATH_CHARS);
        if let Ok(room) = path::parse(&text) {
            let name = room.room.as_str();
            assert!(!name.is_empty() && name.len() <= 256, "{text:?} → {name:?}");
        }
    }
}

#[test]
fn arbitrary_batches_never_panic_or_exceed_the_limit() {
    const LIMIT: usize = 4096;
    let mut rng = Rng::new(0xfeed_beef_dead_c0de);
    let mut batches = Reassembler::new(LIMIT);
    for _ in 0..20_000 {
        match rng.below(3) {
            0 => {
                let len = rng.below(60);
                let marker = format!("y-pk-batch#{}", rng.text(len, JSON_CHARS));
                if let Ok(Some(message)) = batches.marker(&marker) {
                    assert!(message.len() <= LIMIT);
                }
            }
            1 => {
                // A well-formed marker with random numbers.
                let marker = format!(
                    r#"y-pk-batch#{{"id":"b{}","type":"{}","size":{},"count":{}}}"#,
                    rng.below(3),
                    ["start", "end"][rng.below(2)],
                    rng.below(2 * LIMIT),
                    rng.below(8)
                );
                if let Ok(Some(message)) = batches.marker(&marker) {
                    assert!(message.len() <= LIMIT);
                }
            }
            _ => {
                let len = rng.below(1500);
                let chunk = vec![rng.byte(); len];
                let _ = batches.chunk(&chunk);
            }
        }
    }
}
