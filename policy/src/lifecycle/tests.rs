//! Unit tests of `lifecycle`.
use vocab::ids::RequestId;
use vocab::request::SamplingParams;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn request(max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        id: RequestId("r".into()),
        tag: None,
        trace: None,
        prompt_tokens: vec![1, 2, 3],
        sampling: SamplingParams { max_tokens, ..Default::default() },
    }
}

fn life(max_tokens: u32) -> Lifecycle<&'static str> {
    Lifecycle::new(request(max_tokens), LifecycleConfig::new(1, 2), Duration::ZERO)
}

fn drain(l: &mut Lifecycle<&'static str>) -> Vec<Output<&'static str>> {
    std::iter::from_fn(|| l.poll()).collect()
}

fn delta(ids: &[u32]) -> StreamEvent {
    StreamEvent::Delta { text: "x".repeat(ids.len()), tokens: ids.len() as u32, ids: ids.to_vec(), logprobs: vec![] }
}

fn finished(completion: u32) -> StreamEvent {
    StreamEvent::Finished {
        reason: FinishReason::Length,
        usage: Usage { prompt_tokens: 99, completion_tokens: completion, cached_tokens: 0 },
    }
}

/// Placed on `worker` and admitted at `now`.
fn admit(l: &mut Lifecycle<&'static str>, worker: &'static str, now: Duration) {
    l.handle_placed(now, Some(worker));
    assert_eq!(drain(l), vec![Output::Submit { worker, attempt: l.attempt() }]);
    l.handle_admission(now, Admission::Accepted);
    assert_eq!(drain(l), vec![Output::Admitted { attempt: l.attempt() }]);
    assert_eq!(l.running(), Some((&worker, l.attempt())));
}

#[test]
fn a_request_that_waits_too_long_in_a_queue_fails_and_is_cancelled() {
    let config = LifecycleConfig::new(1, 2).with_queue_timeout(Duration::from_secs(5));
    let mut l = Lifecycle::new(request(3), config, Duration::ZERO);
    drain(&mut l);
    admit(&mut l, "a", MS);
    assert_eq!(l.poll_timeout(), Some(MS + Duration::from_secs(5)));
    // Early: nothing happens.
    l.handle_timeout(Duration::from_secs(2));
    assert_eq!(drain(&mut l), vec![]);
    l.handle_timeout(MS + Duration::from_secs(5));
    let waited = Duration::from_secs(5);
    assert_eq!(
        drain(&mut l),
        vec![
            Output::Cancel { worker: "a", attempt: 0 },
            Output::Ended { attempt: 0 },
            Output::Fail(Failure::Queued { waited }),
            Output::Done
        ]
    );
    assert!(l.is_done());
    // Once a token came, the queue timeout no longer applies.
    let mut l = Lifecycle::new(request(3), config, Duration::ZERO);
    drain(&mut l);
    admit(&mut l, "a", MS);
    l.handle_event(MS, &"a", 0, delta(&[7]));
    drain(&mut l);
    assert_eq!(l.poll_timeout(), None);
    l.handle_timeout(Duration::from_secs(60));
    assert_eq!(drain(&mut l), vec![]);
    assert!(!l.is_done());
}

#[test]
fn a_request_streams_and_ends_with_its_usage() {
    let mut l = life(3);
    assert_eq!(drain(&mut l), vec![Output::Place { avoid: vec![] }]);
    admit(&mut l, "a", MS);
    assert!(l.handle_event(MS, &"a", 0, delta(&[7, 8])));
    assert_eq!(drain(&mut l), vec![Output::FirstToken { attempt: 0 }, Output::Deliver(delta(&[7, 8]))]);
    l.handle_event(MS, &"a", 0, delta(&[9]));
    l.handle_event(MS, &"a", 0, finished(3));
    let out = drain(&mut l);
    let usage = Usage { prompt_tokens: 3, completion_tokens: 3, cached_tokens: 0 };
    assert_eq!(
        out[1..],
        [
            Output::Deliver(StreamEvent::Finished { reason: FinishReason::Length, usage }),
            Output::Ended { attempt: 0 },
            Output::Done
        ]
    );
    assert!(l.is_done());
}

#[test]
fn a_failure_before_the_first_token_retries_elsewhere_after_a_pause_then_gives_up() {
    let mut l = life(3);
    drain(&mut l);
    admit(&mut l, "a", MS);
    l.handle_event(MS, &"a", 0, StreamEvent::Failed(WorkerFailure::Crashed("oom".into())));
    let out = drain(&mut l);
    assert_eq!(out[..2], [Output::Cancel { worker: "a", attempt: 0 }, Output::Ended { attempt: 0 }]);
    assert!(matches!(&out[2], Output::Note(Note::AttemptFailed { attempt: 0, why }) if why.contains("oom")));
    assert_eq!(out[3], Output::Note(Note::Retry));
    // The pause: nothing before it ends.
    assert_eq!(l.poll_timeout(), Some(MS + Duration::from_millis(150)));
    l.handle_timeout(MS * 100);
    assert_eq!(drain(&mut l), vec![]);
    l.handle_timeout(MS * 151);
    assert_eq!(drain(&mut l), vec![Output::Place { avoid: vec!["a"] }]);
    admit(&mut l, "b", MS * 152);
    assert_eq!(l.attempt(), 1);
    // One retry allowed (`retries = 1`): the second failure is the end.
    l.handle_worker_failed(MS * 160, &"b", "node b missed its lease");
    let out = drain(&mut l);
    assert_eq!(out.last().cloned(), Some(Output::Done),);
    assert!(out.iter().any(
        |o| matches!(o, Output::Fail(Failure::Unavailable(why)) if why == "The worker serving this request failed: node b missed its lease")
    ));
}

#[test]
fn a_failure_mid_stream_migrates_with_the_tokens_so_far_and_counts_usage_across_attempts() {
    let mut l = life(5);
    drain(&mut l);
    admit(&mut l, "a", MS);
    l.handle_event(MS, &"a", 0, delta(&[10, 11]));
    drain(&mut l);
    l.handle_worker_failed(MS * 2, &"a", "poll failed");
    let out = drain(&mut l);
    assert_eq!(out[..2], [Output::Cancel { worker: "a", attempt: 0 }, Output::Ended { attempt: 0 }]);
    assert!(matches!(&out[2], Output::Note(Note::Migration { why }) if why == "poll failed"));
    // The continuation: the prompt plus what was delivered, three tokens still to generate.
    assert_eq!(l.request().prompt_tokens, vec![1, 2, 3, 10, 11]);
    assert_eq!(l.request().sampling.max_tokens, 3);
    assert_eq!(l.poll_timeout(), Some(MS * 152));
    l.handle_timeout(MS * 152);
    assert_eq!(drain(&mut l), vec![Output::Place { avoid: vec!["a"] }]);
    admit(&mut l, "b", MS * 153);
    l.handle_event(MS * 154, &"b", 1, delta(&[12]));
    assert_eq!(drain(&mut l)[0], Output::FirstToken { attempt: 1 }, "each attempt's first token is told");
    // Worker b found 4 of the continuation's 5 prompt tokens cached: of the client's prompt, 3.
    let usage = Usage { prompt_tokens: 5, completion_tokens: 3, cached_tokens: 4 };
    l.handle_event(MS * 155, &"b", 1, StreamEvent::Finished { reason: FinishReason::Length, usage });
    let usage = Usage { prompt_tokens: 3, completion_tokens: 5, cached_tokens: 3 };
    assert!(drain(&mut l).contains(&Output::Deliver(StreamEvent::Finished { reason: FinishReason::Length, usage })));
    assert_eq!(l.delivered(), 3, "the client got 2 + 1 text tokens (the last attempt's end says 3)");
}

#[test]
fn a_migrated_constraint_has_consumed_every_token_delivered_and_scores_go_once() {
    use vocab::request::{Constraint, Grammar, TokenLogprob};
    let mut req = request(10);
    req.sampling.constraint = Some(Box::new(Constraint::new(Grammar::Regex("[a-z]+".into()))));
    req.sampling.prompt_logprobs = Some(1);
    let mut l = Lifecycle::new(req, LifecycleConfig::new(1, 3), Duration::ZERO);
    drain(&mut l);
    admit(&mut l, "a", MS);
    let scored = StreamEvent::Scored { first: 1, logprobs: vec![TokenLogprob { id: 2, logprob: -1.0, top: vec![] }] };
    l.handle_event(MS, &"a", 0, scored.clone());
    assert!(drain(&mut l).contains(&Output::Deliver(scored)));
    assert_eq!(l.request().sampling.prompt_logprobs, None, "delivered once: not asked for again");
    l.handle_event(MS, &"a", 0, delta(&[10, 11]));
    drain(&mut l);
    l.handle_worker_failed(MS * 2, &"a", "gone");
    drain(&mut l);
    assert_eq!(l.request().sampling.constraint.as_ref().unwrap().consumed, vec![10, 11]);
    // A second move adds what the second worker delivered.
    l.handle_timeout(MS * 200);
    drain(&mut l);
    admit(&mut l, "b", MS * 201);
    l.handle_event(MS * 202, &"b", 1, delta(&[12]));
    drain(&mut l);
    l.handle_worker_failed(MS * 203, &"b", "gone too");
    drain(&mut l);
    assert_eq!(l.request().sampling.constraint.as_ref().unwrap().consumed, vec![10, 11, 12]);
    assert_eq!(l.request().prompt_tokens, vec![1, 2, 3, 10, 11, 12]);
}

#[test]
fn migrations_run_out_and_a_lost_ending_still_finishes() {
    let mut l = life(2);
    drain(&mut l);
    let mut now = MS;
    for (k, w) in ["a", "b", "c"].into_iter().enumerate() {
        admit(&mut l, w, now);
        if k == 0 {
            l.handle_event(now, &w, 0, delta(&[5]));
        }
        l.handle_worker_failed(now, &w, "gone");
        let out = drain(&mut l);
        if k < 2 {
            assert!(out.iter().any(|o| matches!(o, Output::Note(Note::Migration { .. }))), "{k}: {out:?}");
            now = l.poll_timeout().unwrap();
            l.handle_timeout(now);
            drain(&mut l);
        } else {
            assert!(out.contains(&Output::Fail(Failure::Unavailable(
                "The worker serving this request failed after 2 migrations: gone".into()
            ))));
        }
    }
    // Every token delivered, only the end lost: it finishes without another placement.
    let mut l = life(1);
    drain(&mut l);
    admit(&mut l, "a", MS);
    l.handle_event(MS, &"a", 0, delta(&[5]));
    drain(&mut l);
    l.handle_worker_failed(MS, &"a", "gone");
    let out = drain(&mut l);
    let usage = Usage { prompt_tokens: 3, completion_tokens: 1, cached_tokens: 0 };
    assert!(out.contains(&Output::Deliver(StreamEvent::Finished { reason: FinishReason::Length, usage })));
    assert_eq!(out.last(), Some(&Output::Done));
    assert!(!out.iter().any(|o| matches!(o, Output::Place { .. })));
}

#[test]
fn stale_events_are_dropped_and_cancelled_and_other_workers_failures_ignored() {
    let mut l = life(4);
    drain(&mut l);
    admit(&mut l, "a", MS);
    l.handle_worker_failed(MS, &"a", "lease");
    drain(&mut l);
    l.handle_timeout(MS * 200);
    drain(&mut l);
    admit(&mut l, "b", MS * 200);
    // a healed and sends what it computed for attempt 0: stale.
    assert!(!l.handle_event(MS * 201, &"a", 0, delta(&[1])));
    assert_eq!(drain(&mut l), vec![Output::Note(Note::Stale), Output::Cancel { worker: "a", attempt: 0 }]);
    // Right worker, wrong attempt: stale too.
    assert!(!l.handle_event(MS * 201, &"b", 0, delta(&[1])));
    drain(&mut l);
    l.handle_worker_failed(MS * 202, &"a", "old news");
    assert_eq!(drain(&mut l), vec![]);
    assert_eq!(l.delivered(), 0);
}

#[test]
fn no_worker_is_asked_again_until_the_placement_wait_then_fails() {
    let mut l = life(4);
    drain(&mut l);
    let mut now = Duration::ZERO;
    let mut asks = 0;
    loop {
        l.handle_placed(now, None);
        let out = drain(&mut l);
        if out.last() == Some(&Output::Done) {
            assert!(out.contains(&Output::Fail(Failure::Unavailable(
                "No worker is available to serve this request; retry later.".into()
            ))));
            break;
        }
        now = l.poll_timeout().expect("asks again");
        l.handle_timeout(now);
        assert_eq!(drain(&mut l), vec![Output::Place { avoid: vec![] }]);
        asks += 1;
    }
    assert_eq!(asks, 30, "every 100 ms for 3 s");
    assert!(now <= Duration::from_secs(3));
}

#[test]
fn a_worker_that_refuses_a_request_is_passed_over_and_the_last_refusal_is_the_clients() {
    let mut l = life(4);
    drain(&mut l);
    l.handle_placed(MS, Some("other-model"));
    drain(&mut l);
    l.handle_admission(MS, Admission::Rejected("token id 70000 is outside the vocabulary".into()));
    let out = drain(&mut l);
    assert!(out.contains(&Output::Note(Note::Retry)), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::Fail(_))), "{out:?}");
    // After the pause it asks again, avoiding the worker that refused.
    l.handle_timeout(MS + Duration::from_secs(1));
    assert_eq!(drain(&mut l), vec![Output::Place { avoid: vec!["other-model"] }]);
    admit(&mut l, "right", 2 * MS);
    // With no retry left, a refusal is the client's 400.
    let mut l = Lifecycle::new(request(4), LifecycleConfig::new(0, 2), Duration::ZERO);
    drain(&mut l);
    l.handle_placed(MS, Some("a"));
    drain(&mut l);
    l.handle_admission(MS, Admission::Rejected("too long for every pool".into()));
    assert!(drain(&mut l).contains(&Output::Fail(Failure::Invalid("too long for every pool".into()))));
}

#[test]
fn admission_refusals_and_invalid_requests_end_without_a_retry() {
    let mut l = life(4);
    drain(&mut l);
    l.handle_placed(MS, Some("a"));
    drain(&mut l);
    l.handle_admission(MS, Admission::Overloaded { queued: 9 });
    let out = drain(&mut l);
    assert_eq!(out, vec![Output::Ended { attempt: 0 }, Output::Fail(Failure::Overloaded { queued: 9 }), Output::Done]);
    assert!(Failure::Overloaded { queued: 9 }.to_string().contains("9 requests queued"));
    let mut l = life(4);
    drain(&mut l);
    l.handle_placed(MS, Some("a"));
    drain(&mut l);
    l.handle_admission(MS, Admission::Unavailable("stopping".into()));
    assert!(drain(&mut l).contains(&Output::Note(Note::Retry)), "unavailable is retried");
    let mut l = life(4);
    drain(&mut l);
    admit(&mut l, "a", MS);
    l.handle_event(MS, &"a", 0, StreamEvent::Failed(WorkerFailure::Invalid("too long".into())));
    assert_eq!(drain(&mut l)[1], Output::Fail(Failure::Invalid("too long".into())));
}

#[test]
fn the_client_leaving_cancels_the_worker_once() {
    let mut l = life(4);
    drain(&mut l);
    admit(&mut l, "a", MS);
    l.handle_client_gone(MS);
    assert_eq!(
        drain(&mut l),
        vec![
            Output::Cancel { worker: "a", attempt: 0 },
            Output::Ended { attempt: 0 },
            Output::Note(Note::ClientGone),
            Output::Done
        ]
    );
    l.handle_client_gone(MS);
    assert_eq!(drain(&mut l), vec![]);
    // While pausing between attempts there is no worker to tell.
    let mut l = life(4);
    drain(&mut l);
    admit(&mut l, "a", MS);
    l.handle_worker_failed(MS, &"a", "x");
    drain(&mut l);
    l.handle_client_gone(MS * 2);
    assert_eq!(drain(&mut l), vec![Output::Note(Note::ClientGone), Output::Done]);
}
