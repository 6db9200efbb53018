//! Publishing a batch: requests within Pub/Sub's limits, keys in sequence, retries
//! within the deadline, and one message id per message in the answer.

use super::*;

/// `%` and `+` are legal in topic names but not literal in a URL path.
fn path_escape(s: &str) -> String {
    s.replace('%', "%25").replace('+', "%2B")
}

/// One unit of work: a key's requests in sequence, or one keyless request.
enum Job<'a> {
    Keyed(&'a str, &'a [PlannedRequest]),
    Unordered(&'a PlannedRequest),
}

impl Job<'_> {
    /// The batch indexes of the job's messages.
    fn messages(&self) -> impl Iterator<Item = usize> + '_ {
        let reqs: &[PlannedRequest] = match self {
            Job::Keyed(_, reqs) => reqs,
            Job::Unordered(req) => std::slice::from_ref(*req),
        };
        reqs.iter().flat_map(|r| r.messages.iter().copied())
    }
}

/// The error of a message whose request was not sent before the deadline.
fn too_late() -> Error {
    Error::Timeout("pubsub: not sent, the batch's deadline passed".into())
}

impl Stream for PubSubStream {
    fn name(&self) -> &str {
        "pubsub"
    }

    fn route_label<'a>(&self, options: &'a crate::message::Options) -> Option<&'a str> {
        crate::blocking::stream::route_option(options, crate::core::pubsub::TOPIC_NAME)
    }

    /// An unauthenticated `GET` of the project's topic list (the TLS handshake
    /// and an HTTP answer, no side effect), then a token where one is needed: a
    /// TLS mistake stops `Outbox::start` with [`Error::Tls`].
    fn connect(&mut self) -> Result<()> {
        self.http.probe(&format!(
            "{}/v1/projects/{}/topics",
            self.base, self.project
        ))?;
        if let Some(auth) = &self.auth {
            auth.bearer(&Deadline::after(UNBOUNDED))?;
        }
        Ok(())
    }

    fn validator(&self) -> Arc<dyn Validate> {
        Arc::new(PubSubValidator {
            max_message_size: self.max_message_size,
        })
    }

    fn publish(&mut self, batch: &[StoredMessage], deadline: &Deadline) -> Vec<Result<()>> {
        let mut out: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
        let mut items = Vec::with_capacity(batch.len());
        let mut failed_keys: HashSet<String> = HashSet::new();
        for (i, m) in batch.iter().enumerate() {
            let parsed = crate::core::pubsub::validate(
                &m.payload,
                &m.headers,
                &m.options,
                m.ordering_key.as_deref(),
                self.max_message_size,
            );
            // The relay's order is by the message's key; the Pub/Sub ordering key
            // (the option, if set) only labels the message on the wire.
            let key = m
                .ordering_key
                .as_deref()
                .filter(|k| !k.is_empty())
                .or_else(|| parsed.as_ref().ok().and_then(|r| r.ordering_key.as_deref()))
                .map(str::to_string);
            if let Some(k) = key.as_ref().filter(|k| failed_keys.contains(*k)) {
                out[i] = Some(Err(held_back("pubsub", k)));
                continue;
            }
            match parsed {
                Ok(route) => items.push(PlanItem {
                    index: i,
                    topic: route.resource(&self.project),
                    size: message_size(
                        &m.payload,
                        &m.headers,
                        effective_ordering_key(&route, m.ordering_key.as_deref()),
                    ),
                    key,
                }),
                Err(e) => {
                    // Refused before sending; it still holds back its key.
                    failed_keys.extend(key);
                    out[i] = Some(Err(e));
                }
            }
        }
        let plan = plan(&items, MAX_MESSAGES_PER_REQUEST, MAX_MESSAGE_SIZE);
        let jobs: Vec<Job<'_>> = plan
            .keyed
            .iter()
            .map(|(key, reqs)| Job::Keyed(key, reqs))
            .chain(plan.unordered.iter().map(Job::Unordered))
            .collect();
        let next = AtomicUsize::new(0);
        let results: Vec<(usize, Result<()>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.concurrency.min(jobs.len()))
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let j = next.fetch_add(1, Ordering::Relaxed);
                            let Some(job) = jobs.get(j) else { break };
                            if deadline.expired() {
                                // No new request: the batch's time is up.
                                done.extend(job.messages().map(|i| (i, Err(too_late()))));
                            } else {
                                self.run(job, batch, &mut done, deadline);
                            }
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| {
                    w.join().unwrap_or_else(|_| {
                        log::error!("outboxer: a Pub/Sub publish thread panicked");
                        Vec::new()
                    })
                })
                .collect()
        });
        for (i, r) in results {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::unavailable("pubsub", "not published"))))
            .collect()
    }
}

impl PubSubStream {
    fn run(
        &self,
        job: &Job<'_>,
        batch: &[StoredMessage],
        done: &mut Vec<(usize, Result<()>)>,
        deadline: &Deadline,
    ) {
        match job {
            Job::Unordered(req) => {
                let r = self.send_request(req, batch, deadline);
                done.extend(
                    req.messages
                        .iter()
                        .map(|&i| (i, r.as_ref().map(|_| ()).map_err(|e| e.duplicate("pubsub")))),
                );
            }
            Job::Keyed(key, reqs) => {
                let mut failed = false;
                for req in reqs.iter() {
                    if failed {
                        done.extend(
                            req.messages
                                .iter()
                                .map(|&i| (i, Err(held_back("pubsub", key)))),
                        );
                        continue;
                    }
                    if deadline.expired() {
                        done.extend(req.messages.iter().map(|&i| (i, Err(too_late()))));
                        failed = true;
                        continue;
                    }
                    let r = self.send_request(req, batch, deadline);
                    failed = r.is_err();
                    done.extend(
                        req.messages.iter().map(|&i| {
                            (i, r.as_ref().map(|_| ()).map_err(|e| e.duplicate("pubsub")))
                        }),
                    );
                }
            }
        }
    }

    /// One publish request; its outcome holds for all of its messages.
    fn send_request(
        &self,
        req: &PlannedRequest,
        batch: &[StoredMessage],
        deadline: &Deadline,
    ) -> Result<()> {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .filter_map(|&i| batch.get(i))
            .map(|m| {
                let mut attributes: Map<String, Value> = m
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect();
                attributes.insert(
                    MESSAGE_ID_HEADER.to_string(),
                    Value::from(m.message_id.to_string()),
                );
                let mut msg = Map::new();
                msg.insert(
                    "data".into(),
                    Value::from(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
                );
                msg.insert("attributes".into(), Value::Object(attributes));
                let key = PubSubRoute::parse(&m.options).ok().and_then(|r| {
                    effective_ordering_key(&r, m.ordering_key.as_deref()).map(str::to_string)
                });
                if let Some(k) = key {
                    msg.insert("orderingKey".into(), Value::from(k));
                }
                Value::Object(msg)
            })
            .collect();
        let body = serde_json::json!({ "messages": messages })
            .to_string()
            .into_bytes();
        let url = format!("{}/v1/{}:publish", self.base, path_escape(&req.topic));
        let send = || {
            self.http.send(
                || {
                    let mut headers =
                        vec![("content-type".to_string(), "application/json".to_string())];
                    if let Some(auth) = &self.auth {
                        headers.push(("authorization".to_string(), auth.bearer(deadline)?));
                    }
                    Ok(HttpRequest {
                        method: "POST",
                        url: url.clone(),
                        headers,
                        body: body.clone(),
                    })
                },
                deadline,
            )
        };
        let mut resp = send()?;
        if matches!(resp.status, 401 | 403) {
            if let Some(auth) = &self.auth {
                // An expired or revoked token: one more try with a fresh one.
                auth.invalidate();
                resp = send()?;
                if matches!(resp.status, 401 | 403) {
                    // Refused again: fetch a new token at the next publish too.
                    auth.invalidate();
                }
            }
        }
        match resp.status {
            200..=299 => check_message_ids(&resp.body, req.messages.len()),
            404 => Err(Error::Rejected(format!(
                "pubsub: topic {} not found: {}",
                req.topic,
                resp.body_text()
            ))),
            // The credentials or the permission: an outage, never the message's fault.
            401 | 403 => Err(Error::unauthorized(
                "pubsub",
                format!("HTTP {}: {}", resp.status, resp.body_text()),
            )),
            _ => Err(status_error("pubsub", &resp)),
        }
    }
}

/// A publish succeeded only if its answer names one message id per message sent;
/// anything else (an empty object from a proxy, too few ids) is transient: the
/// messages are sent again rather than marked dispatched.
pub(super) fn check_message_ids(body: &[u8], sent: usize) -> Result<()> {
    let ids = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.get("messageIds")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|id| id.is_string()).count())
    });
    match ids {
        Some(n) if n == sent => Ok(()),
        Some(n) => Err(Error::unavailable(
            "pubsub",
            format!("the publish answer has {n} message id(s) for {sent} message(s)"),
        )),
        None => Err(Error::unavailable(
            "pubsub",
            "the publish answer has no messageIds list",
        )),
    }
}
