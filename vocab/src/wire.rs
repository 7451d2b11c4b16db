//! Control-plane encoding of message payloads for ractor_cluster (`BytesConvertable`).
//!
//! Payloads are JSON: control messages are small and this keeps them readable in captures. A
//! payload that fails to decode panics inside `from_bytes`; ractor_cluster's generated code catches
//! that panic and drops the message (a call then fails at the caller), so a malformed peer message
//! never takes an actor down.

/// Implement `ractor::BytesConvertable` for serde types.
#[macro_export]
macro_rules! wire_message {
    ($($t:ty),+ $(,)?) => {$(
        impl ::ractor::BytesConvertable for $t {
            fn into_bytes(self) -> Vec<u8> {
                $crate::wire::encode(&self)
            }
            fn from_bytes(bytes: Vec<u8>) -> Self {
                $crate::wire::decode(&bytes)
            }
        }
    )+};
}

/// Encode a payload.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| panic!("{} cannot be encoded: {e}", std::any::type_name::<T>()))
}

/// Decode a payload; see the module docs for why a malformed one panics.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    try_decode(bytes).unwrap_or_else(|e| panic!("malformed control-plane payload: {e}"))
}

/// Decode a payload, returning the error.
pub fn try_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{} ({} bytes): {e}", std::any::type_name::<T>(), bytes.len()))
}

#[cfg(test)]
mod tests {
    use ractor::BytesConvertable;

    use crate::ids::RequestId;
    use crate::request::{FinishReason, GenerateRequest, PollReply, SamplingParams, StreamEvent, TokenLogprob, Usage};

    #[test]
    fn payloads_round_trip() {
        let req = GenerateRequest {
            id: RequestId("r1".into()),
            tag: Some("client-7".into()),
            trace: Some(crate::request::TraceContext {
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: String::new(),
            }),
            prompt_tokens: vec![1, 2, 3],
            sampling: SamplingParams { stop: vec!["\n".into()], ..Default::default() },
        };
        assert_eq!(GenerateRequest::from_bytes(req.clone().into_bytes()), req);
        let reply = PollReply {
            events: vec![
                StreamEvent::Delta { text: "hé".into(), tokens: 2, ids: vec![104, 233], logprobs: vec![] },
                // A prompt token the logits rule out: minus infinity, which JSON cannot hold.
                StreamEvent::Scored {
                    first: 1,
                    logprobs: vec![
                        TokenLogprob { id: 2, logprob: f32::NEG_INFINITY, top: vec![(5, -0.25)] },
                        TokenLogprob { id: 3, logprob: -1.5, top: vec![] },
                    ],
                },
                StreamEvent::Finished {
                    reason: FinishReason::Length,
                    usage: Usage { prompt_tokens: 3, completion_tokens: 2, cached_tokens: 0 },
                },
            ],
        };
        assert_eq!(PollReply::from_bytes(reply.clone().into_bytes()), reply);
    }

    #[test]
    fn malformed_payload_is_an_error_not_garbage() {
        let err = super::try_decode::<GenerateRequest>(b"{\"id\":").unwrap_err();
        assert!(err.contains("GenerateRequest"), "{err}");
        let caught = std::panic::catch_unwind(|| GenerateRequest::from_bytes(b"nonsense".to_vec()));
        assert!(caught.is_err());
    }
}
