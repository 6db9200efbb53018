//! librdkafka's error codes mapped to outboxer's failure kinds: outage
//! (unauthorized, unavailable, timeout) or the message's own failure.

use super::*;

/// Maps a librdkafka error to outboxer's (see [`map_code`]); an error without a
/// code is the message's own failure.
pub(super) fn map_error(e: &KafkaError) -> Error {
    match e.rdkafka_error_code() {
        Some(code) => map_code(code, e),
        None => Error::Rejected(e.to_string()),
    }
}

/// The table: timeouts are `Timeout`; refused authentication or authorization
/// `Unauthorized`; no connection, no leader, too few replicas, throttling or a
/// producer to replace `Unavailable` (all outages, never counted); a missing
/// topic or partition, an oversized or invalid record and the rest `Rejected`
/// (the message's own failure).
pub(super) fn map_code(code: RDKafkaErrorCode, e: &dyn std::fmt::Display) -> Error {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            Error::Timeout(format!("Kafka delivery: {e}"))
        }
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::DelegationTokenAuthorizationFailed
        | C::DelegationTokenExpired
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::UnacceptableCredential
        | C::Authentication => Error::unauthorized("kafka", e),
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::SSL
        | C::NetworkException
        | C::BrokerNotAvailable
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::PreferredLeaderNotAvailable
        | C::EligibleLeadersNotAvailable
        | C::ReplicaNotAvailable
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::ISRInsufficient
        | C::KafkaStorageError
        | C::ThrottlingQuotaExceeded
        | C::QueueFull
        | C::PurgeQueue
        | C::PurgeInflight
        | C::Fatal
        | C::Retry
        | C::RebootstrapRequired
        | C::ProducerFenced
        | C::OutOfOrderSequenceNumber
        | C::UnknownProducerId
        | C::InvalidProducerEpoch
        | C::BrokerDestroy
        | C::DestroyBroker => Error::unavailable("kafka", e),
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => {
            Error::Rejected(format!("no such topic or partition: {e}"))
        }
        _ => Error::Rejected(e.to_string()),
    }
}

/// A copy of a connection-level error for each affected message (always transient).
pub(super) fn same_transient(e: &Error) -> Error {
    if e.is_transient() {
        e.duplicate("kafka")
    } else {
        Error::unavailable("kafka", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode as C;

    fn delivery(code: C) -> Error {
        map_error(&KafkaError::MessageProduction(code))
    }

    /// Authorization and authentication failures are outages (`Unauthorized`), and
    /// a partition without a leader is `Unavailable`: neither counts an attempt.
    #[test]
    fn authorization_and_leaderless_partitions_are_outages() {
        for code in [
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::TransactionalIdAuthorizationFailed,
            C::SaslAuthenticationFailed,
            C::Authentication,
            C::UnsupportedSASLMechanism,
            C::IllegalSASLState,
            C::DelegationTokenExpired,
        ] {
            let e = delivery(code);
            assert!(matches!(e, Error::Unauthorized { .. }), "{code:?}: {e:?}");
        }
        for code in [
            C::LeaderNotAvailable,
            C::NotLeaderForPartition,
            C::PreferredLeaderNotAvailable,
            C::EligibleLeadersNotAvailable,
            C::BrokerNotAvailable,
            C::ReplicaNotAvailable,
            C::FencedLeaderEpoch,
            C::UnknownLeaderEpoch,
            C::NotEnoughReplicas,
            C::AllBrokersDown,
            C::ThrottlingQuotaExceeded,
        ] {
            let e = delivery(code);
            assert!(matches!(e, Error::Unavailable { .. }), "{code:?}: {e:?}");
        }
    }

    /// A missing topic or an oversized record stays the message's own failure.
    #[test]
    fn wrong_routes_and_oversized_records_are_message_failures() {
        for code in [
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::UnknownPartition,
            C::MessageSizeTooLarge,
            C::InvalidRecord,
        ] {
            let e = delivery(code);
            assert!(
                matches!(e, Error::Rejected(_)) && !e.is_transient(),
                "{code:?}: {e:?}"
            );
        }
    }
}
