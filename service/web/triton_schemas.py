"""Marshmallow schemas of the Triton and KServe extension answers (statistics, model configuration,
repository index, KServe v1 status): they describe what ``service/web/triton.py`` and the blueprints write,
for the OpenAPI document; no request is loaded through them."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

_COUNT = validate.Range(min=0)


class StatDuration(Schema):
    """A count of requests and their total time."""

    count = fields.Integer(required=True, validate=_COUNT)
    ns = fields.Integer(required=True, validate=_COUNT)


class InferenceStats(Schema):
    """Triton's per-phase request statistics."""

    success = fields.Nested(StatDuration, required=True)
    fail = fields.Nested(StatDuration, required=True)
    queue = fields.Nested(StatDuration, required=True)
    compute_input = fields.Nested(StatDuration, required=True, metadata={"description": "not timed: zero"})
    compute_infer = fields.Nested(StatDuration, required=True)
    compute_output = fields.Nested(StatDuration, required=True, metadata={"description": "not timed: zero"})
    cache_hit = fields.Nested(StatDuration, required=True, metadata={"description": "no cache: zero"})
    cache_miss = fields.Nested(StatDuration, required=True, metadata={"description": "no cache: zero"})


class ModelStatistics(Schema):
    """One model version's statistics."""

    name = fields.String(required=True)
    version = fields.String(required=True)
    last_inference = fields.Integer(required=True, validate=_COUNT,
                                    metadata={"description": "milliseconds since the epoch; 0: none yet"})
    inference_count = fields.Integer(required=True, validate=_COUNT, metadata={"description": "images"})
    execution_count = fields.Integer(required=True, validate=_COUNT, metadata={"description": "batches"})
    inference_stats = fields.Nested(InferenceStats, required=True)
    batch_stats = fields.List(fields.Dict(), required=True, validate=validate.Length(max=0),
                              metadata={"description": "empty: batch sizes are kept as ranges, not sizes"})
    memory_usage = fields.List(fields.Dict(), required=True, validate=validate.Length(max=0))


class Statistics(Schema):
    """Triton's statistics extension answer."""

    model_stats = fields.List(fields.Nested(ModelStatistics), required=True)


class ConfigTensor(Schema):
    """An input or output in Triton's model configuration."""

    name = fields.String(required=True)
    data_type = fields.String(required=True,
                              validate=validate.OneOf(["TYPE_FP32", "TYPE_STRING", "TYPE_BOOL"]))
    format = fields.String(validate=validate.OneOf(["FORMAT_NCHW", "FORMAT_NONE"]))
    dims = fields.List(fields.Integer(validate=validate.Range(min=1)), required=True)


class QueuePolicy(Schema):
    """The queue's bound and timeout."""

    timeout_action = fields.String(required=True, validate=validate.OneOf(["REJECT"]))
    allow_timeout_override = fields.Boolean(required=True)
    max_queue_size = fields.Integer(required=True, validate=_COUNT)
    default_timeout_microseconds = fields.Integer(required=True, validate=_COUNT)


class DynamicBatching(Schema):
    """Dynamic batching settings."""

    max_queue_delay_microseconds = fields.Integer(required=True, validate=_COUNT)
    preserve_ordering = fields.Boolean(required=True)
    default_queue_policy = fields.Nested(QueuePolicy, required=True)


class InstanceGroup(Schema):
    """Where the model runs."""

    name = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["KIND_CPU", "KIND_GPU"]))
    count = fields.Integer(required=True, validate=validate.Range(min=1))
    gpus = fields.List(fields.Integer(validate=_COUNT), required=True)


class StringParameter(Schema):
    """A Triton configuration parameter."""

    string_value = fields.String(required=True)


class ModelConfig(Schema):
    """Triton's model configuration extension answer."""

    name = fields.String(required=True)
    platform = fields.String(required=True)
    backend = fields.String(required=True)
    version_policy = fields.Dict(required=True, metadata={"description": "all: every version is served"})
    max_batch_size = fields.Integer(required=True, validate=validate.Range(min=1))
    input = fields.List(fields.Nested(ConfigTensor), required=True)
    output = fields.List(fields.Nested(ConfigTensor), required=True)
    dynamic_batching = fields.Nested(DynamicBatching, required=True)
    instance_group = fields.List(fields.Nested(InstanceGroup), required=True)
    parameters = fields.Dict(keys=fields.String(), values=fields.Nested(StringParameter), required=True)


class RepositoryEntry(Schema):
    """One artifact of the model repository and its state."""

    name = fields.String(required=True)
    version = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(["READY", "UNAVAILABLE"]))
    reason = fields.String(required=True, metadata={"description": "why it is not served; empty when READY"})


class ModelStatus(Schema):
    """KServe v1 model status."""

    name = fields.String(required=True)
    ready = fields.Boolean(required=True)


class Alive(Schema):
    """KServe v1 server liveness (``GET /`` from a client that does not ask for HTML)."""

    status = fields.String(required=True, validate=validate.OneOf(["alive"]))


class RepositoryAction(Schema):
    """What a load or unload did, as each model runtime answered."""

    name = fields.String(required=True)
    action = fields.String(required=True, validate=validate.OneOf(["load", "unload"]))
    runtimes = fields.List(fields.String(), required=True,
                           metadata={"description": "each runtime's answer, e.g. 'serving mnist-cnn "
                                                    "version(s) 2'"})


COMPONENTS = ("Statistics", "ModelConfig", "RepositoryEntry", "RepositoryAction", "ModelStatus", "Alive")
