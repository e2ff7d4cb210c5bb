//! Kafka topic ids (KIP-516): which incarnation of a topic a partition belongs to.
//!
//! A topic deleted and created again under the same name, or the same name on a rebuilt
//! cluster, starts its offsets at 0 again and gets a new id. A checkpoint records the id of the
//! topic it was taken from ([`crate::state::Header::topic_id`]), so that a checkpoint of an
//! earlier incarnation is never used to skip the new one's messages.
//!
//! rdkafka 0.39 wraps no call that returns the id; librdkafka's Admin API does
//! (`rd_kafka_DescribeTopics`, which any client handle may issue), so this is the one place
//! the source talks to librdkafka's C API directly.

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::time::Duration;

/// A librdkafka object destroyed when dropped.
struct Owned<T> {
    ptr: *mut T,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the librdkafka constructor matching `destroy`, is owned
            // by this value alone and is destroyed once.
            unsafe { (self.destroy)(self.ptr) }
        }
    }
}

/// The ids of `topics` (base64, as Kafka's tools print them). A topic the cluster does not
/// know, or one reported with the all-zero id (brokers before Kafka 2.8, librdkafka's mock
/// cluster), is left out: its incarnation cannot be told. `Err` when the request itself fails
/// or gets no answer within `timeout`.
pub fn topic_ids<C: ClientContext>(
    client: &Client<C>,
    topics: &[&str],
    timeout: Duration,
) -> Result<HashMap<String, String>, String> {
    let names = topics
        .iter()
        .map(|t| CString::new(*t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "a topic name holds a NUL byte".to_string())?;
    let mut ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    let rk = client.native_ptr();
    // SAFETY: `rk` is a live client handle for the duration of `client`'s borrow; every
    // object created here is owned by an `Owned` guard and destroyed after its last use (the
    // event before the collection and options it answers, the queue last); `ptrs` points into
    // `names`, which outlives the call that copies them.
    unsafe {
        let queue = Owned {
            ptr: rd::rd_kafka_queue_new(rk),
            destroy: rd::rd_kafka_queue_destroy,
        };
        let options = Owned {
            ptr: rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            destroy: rd::rd_kafka_AdminOptions_destroy,
        };
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.ptr,
            ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let collection = Owned {
            ptr: rd::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len()),
            destroy: rd::rd_kafka_TopicCollection_destroy,
        };
        if queue.ptr.is_null() || options.ptr.is_null() || collection.ptr.is_null() {
            return Err("librdkafka could not set up a DescribeTopics request".into());
        }
        rd::rd_kafka_DescribeTopics(rk, collection.ptr, options.ptr, queue.ptr);
        let event = Owned {
            ptr: rd::rd_kafka_queue_poll(queue.ptr, ms.saturating_add(1000)),
            destroy: rd::rd_kafka_event_destroy,
        };
        if event.ptr.is_null() {
            return Err(format!("no answer to DescribeTopics within {timeout:?}"));
        }
        if rd::rd_kafka_event_error(event.ptr)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            let why = rd::rd_kafka_event_error_string(event.ptr);
            return Err(if why.is_null() {
                "DescribeTopics failed".into()
            } else {
                CStr::from_ptr(why).to_string_lossy().into_owned()
            });
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.ptr);
        if result.is_null() {
            return Err("DescribeTopics answered with another kind of event".into());
        }
        let mut count = 0usize;
        let described = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        let mut ids = HashMap::new();
        for i in 0..count {
            let d = *described.add(i);
            let err = rd::rd_kafka_TopicDescription_error(d);
            if !err.is_null()
                && rd::rd_kafka_error_code(err)
                    != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                continue;
            }
            let (name, id) = (
                rd::rd_kafka_TopicDescription_name(d),
                rd::rd_kafka_TopicDescription_topic_id(d),
            );
            if name.is_null()
                || id.is_null()
                || (rd::rd_kafka_Uuid_most_significant_bits(id) == 0
                    && rd::rd_kafka_Uuid_least_significant_bits(id) == 0)
            {
                continue;
            }
            let text = rd::rd_kafka_Uuid_base64str(id);
            if text.is_null() {
                continue;
            }
            ids.insert(
                CStr::from_ptr(name).to_string_lossy().into_owned(),
                CStr::from_ptr(text).to_string_lossy().into_owned(),
            );
        }
        Ok(ids)
    }
}
