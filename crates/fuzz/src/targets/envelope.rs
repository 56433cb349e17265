//! `envelope`: the signed envelope every downlink message travels in,
//! through `gate_envelope::Verifier::open` and the replay rule. The first
//! byte of an input says what the rest is: the envelope as received, or an
//! `EnvelopeBody` that the target signs with a trusted key first (so the
//! body parser and the site, gate and stream checks behind the signature
//! are reached).

use crate::rng::Rng;
use crate::{Target, class};
use gate_envelope::{STREAMS, Signer, Verifier, check_counter};
use gate_proto::v1 as pb;
use prost::Message;

const SITE: &str = "sz-futian-01";
const GATE: &str = "gate-01";
const RAW: u8 = 0;
const BODY: u8 = 1;

pub struct Envelope {
    signer: Signer,
    verifier: Verifier,
    /// The last counter accepted per stream, as the gate keeps it.
    last: std::collections::HashMap<String, u64>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope").field("verifier", &self.verifier).finish_non_exhaustive()
    }
}

impl Default for Envelope {
    fn default() -> Self {
        let signer = Signer::from_seed([5; 32]);
        let other = Signer::from_seed([6; 32]);
        let verifier = Verifier::new([signer.key_spec(), other.key_spec()]);
        Envelope { signer, verifier, last: Default::default() }
    }
}

impl Envelope {
    fn body(rng: &mut Rng) -> Vec<u8> {
        pb::EnvelopeBody {
            site_id: if rng.below(6) == 0 { rng.text() } else { SITE.to_owned() },
            gate_id: rng.pick(&[GATE, "", "gate-02"]).to_string(),
            stream: if rng.below(8) == 0 { rng.text() } else { rng.pick(STREAMS).to_string() },
            counter: rng.number(),
            issued_at_ms: rng.number() as i64,
            payload: rng.bytes(32),
        }
        .encode_to_vec()
    }
}

impl Target for Envelope {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(17);
        let mut out = Vec::new();
        for stream in STREAMS {
            let mut raw = vec![RAW];
            raw.extend(self.signer.seal(SITE, GATE, stream, 1, 0, b"payload"));
            out.push(raw);
        }
        for _ in 0..4 {
            let mut body = vec![BODY];
            body.extend(Self::body(&mut rng));
            out.push(body);
        }
        out
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        let body = Self::body(rng);
        Some(if rng.coin() {
            let mut raw = vec![RAW];
            raw.extend(self.signer.seal_body(body));
            raw
        } else {
            let mut out = vec![BODY];
            out.extend(body);
            out
        })
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        let mut out = crate::tokens(&[&[0x0a], &[0x12], &[0x1a], &[0x20], &[0x28], &[0x32], &[0x40]]);
        out.extend(STREAMS.iter().map(|s| s.as_bytes().to_vec()));
        out.push(self.signer.key_id().as_bytes().to_vec());
        out
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let Some((&layer, rest)) = input.split_first() else { return 0 };
        let sealed;
        let bytes = if layer == BODY {
            sealed = self.signer.seal_body(rest.to_vec());
            sealed.as_slice()
        } else {
            rest
        };
        // The stream the topic carries: taken from the input's length so
        // that a message also arrives on the wrong topic now and then.
        let expected = STREAMS[input.len() % STREAMS.len()];
        match self.verifier.open(bytes, SITE, GATE, expected) {
            Ok(opened) => {
                if opened.stream != expected || !(opened.gate_id.is_empty() || opened.gate_id == GATE) {
                    panic!("an envelope for another stream or gate was opened");
                }
                let key = opened.replay_key();
                let last = self.last.get(&key).copied();
                let verdict = check_counter(last, opened.counter);
                if verdict.is_ok() {
                    if last.is_some_and(|l| opened.counter <= l) || opened.counter == 0 {
                        panic!("the replay rule accepted counter {} after {last:?}", opened.counter);
                    }
                    self.last.insert(key, opened.counter);
                }
                class(&(layer == BODY, "opened", verdict.is_ok()))
            }
            Err(refusal) => class(&(layer == BODY, refusal.as_str())),
        }
    }
}
