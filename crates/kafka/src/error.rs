//! Errors of the Kafka connectors, classified once, from librdkafka's error codes.
//!
//! - **record**: one message can never be written as it is (larger than the broker accepts,
//!   an invalid record or topic name): it goes to the dead-letter destination with the reason.
//! - **fatal**: nothing works until a person acts (authorization, invalid configuration,
//!   unsupported feature, a fatal idempotent-producer error such as a lost sequence).
//! - **transient**: everything else (transport, leader changes, timeouts, throttling):
//!   librdkafka retries internally; what still fails is retried by the runtime.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tributary_core::error::{Classify, ConnectorError, ErrorClass};

/// What went wrong in the Kafka sink or source.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConnectorError {
    /// A librdkafka call failed; `what` says which (and for which topic/partition).
    #[error("{what}: {source}")]
    Client {
        /// The operation and its subject: `create the producer`, `commit orders/3@1042`.
        what: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// librdkafka raised a fatal error: the client instance cannot be used any more.
    #[error("fatal Kafka client error ({code}): {reason}")]
    Fatal {
        /// The error code.
        code: RDKafkaErrorCode,
        /// librdkafka's explanation.
        reason: String,
    },
    /// Messages were not delivered in time and are produced again at the next flush.
    #[error("{count} message(s) not delivered yet (first: {first}); producing them again")]
    Undelivered {
        /// How many.
        count: usize,
        /// The first failure, with its topic.
        first: String,
    },
    /// A batch cannot be turned into messages (a template names a missing column, the value
    /// column has the wrong type).
    #[error("stream {stream}: {message}")]
    Encode {
        /// The batch's stream.
        stream: String,
        /// What is wrong and where to fix it.
        message: String,
    },
    /// The source could not decode its position or configuration.
    #[error("{0}")]
    Invalid(String),
}

/// The class of a librdkafka error code.
pub fn classify_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode::*;
    match code {
        MessageSizeTooLarge
        | InvalidMessageSize
        | InvalidMessage
        | InvalidRecord
        | MessageBatchTooLarge
        | InvalidTopic
        | InvalidPartitions
        | UnknownTopic
        | UnknownTopicOrPartition
        | UnknownPartition
        | InvalidRequiredAcks => ErrorClass::Record,
        TopicAuthorizationFailed
        | GroupAuthorizationFailed
        | ClusterAuthorizationFailed
        | TransactionalIdAuthorizationFailed
        | SaslAuthenticationFailed
        | Authentication
        | UnsupportedSASLMechanism
        | IllegalSASLState
        | UnsupportedVersion
        | UnsupportedCompressionType
        | UnsupportedFeature
        | InvalidArgument
        | InvalidConfig
        | InvalidType
        | Fatal
        | Fenced
        | InvalidProducerEpoch
        | ProducerFenced
        | OutOfOrderSequenceNumber
        | UnknownProducerId
        | InconsistentGroupProtocol
        | InvalidGroupId
        | FencedInstanceId => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

impl Classify for KafkaConnectorError {
    fn class(&self) -> ErrorClass {
        match self {
            KafkaConnectorError::Client { source, .. } => match source {
                KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => ErrorClass::Fatal,
                KafkaError::Subscription(_) => ErrorClass::Fatal,
                other => other
                    .rdkafka_error_code()
                    .map_or(ErrorClass::Transient, classify_code),
            },
            KafkaConnectorError::Fatal { .. }
            | KafkaConnectorError::Encode { .. }
            | KafkaConnectorError::Invalid(_) => ErrorClass::Fatal,
            KafkaConnectorError::Undelivered { .. } => ErrorClass::Transient,
        }
    }
}

impl From<KafkaConnectorError> for ConnectorError {
    fn from(e: KafkaConnectorError) -> Self {
        let hint = match &e {
            KafkaConnectorError::Client { source, .. } => match source.rdkafka_error_code() {
                Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {
                    Some("grant the client access to the topic")
                }
                Some(RDKafkaErrorCode::UnsupportedCompressionType) => {
                    Some("choose another `compression` (gzip is supported everywhere)")
                }
                _ => None,
            },
            KafkaConnectorError::Fatal { .. } => Some(
                "the producer or consumer state is lost; run the pipeline again \
                 (it resumes from the last committed position)",
            ),
            _ => None,
        };
        let error = ConnectorError::classified(e);
        match hint {
            Some(h) => error.with_hint(h),
            None => error,
        }
    }
}

/// Wraps a librdkafka error with what was being done.
pub(crate) fn client(what: impl Into<String>) -> impl FnOnce(KafkaError) -> KafkaConnectorError {
    let what = what.into();
    move |source| KafkaConnectorError::Client { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        assert_eq!(
            classify_code(RDKafkaErrorCode::MessageSizeTooLarge),
            ErrorClass::Record
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::TopicAuthorizationFailed),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::NotLeaderForPartition),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::MessageTimedOut),
            ErrorClass::Transient
        );
        let e = KafkaConnectorError::Client {
            what: "produce".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure),
        };
        assert_eq!(e.class(), ErrorClass::Transient);
    }
}
