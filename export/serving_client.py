"""Clients for an exported model: REST (this project's server or TensorFlow Serving, same API)
and gRPC (TensorFlow Serving, through tensorflow-serving-api's protos).

    from export.serving_client import RestClient, GrpcClient
    rest = RestClient("http://127.0.0.1:8501", "qm")
    rest.predict_pairs(["how do I reset my password?"], ["how can I change it?"])   # [[p0, p1]]
    rest.predict(instances=[{"texts": "hello"}], signature_name="encode")        # {"predictions": ...}
    rest.search(["reset password"], k=5)                                         # this server only

    grpc = GrpcClient("localhost:8500", "qm")
    grpc.predict({"text_a": ["..."], "text_b": ["..."]})                        # {"probs": ndarray}
    GrpcClient.request("qm", {"text_a": [...], "text_b": [...]})                  # the PredictRequest alone

Errors from the server raise `ServingError` with the HTTP status (REST) or gRPC code and
the server's message (TF Serving and this server both answer `{"error": "..."}`).
"""

from __future__ import annotations


class ServingError(RuntimeError):
    """The server refused or failed a request: `status` (HTTP code or gRPC code name) and its message."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class RestClient:
    """TF Serving's REST API. `model`: the served name; `version`: None = the latest."""

    def __init__(self, url="http://127.0.0.1:8501", model=None, version=None, timeout=30.0, client=None):
        import httpx

        self.url, self.model, self.version = url.rstrip("/"), model, version
        self.http = client or httpx.Client(timeout=timeout)

    def close(self):
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _model_url(self):
        if not self.model:
            raise ValueError("RestClient: set model= (the served model name)")
        v = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.url}/v1/models/{self.model}{v}"

    def _send(self, method, url, body=None):
        resp = self.http.request(method, url, json=body)
        try:
            data = resp.json()
        except ValueError:
            data = {"error": resp.text}
        if resp.status_code != 200:
            raise ServingError(resp.status_code, data.get("error", resp.text) if isinstance(data, dict) else data)
        return data

    def status(self):
        return self._send("GET", self._model_url())

    def metadata(self):
        return self._send("GET", self._model_url() + "/metadata")

    def predict(self, instances=None, inputs=None, signature_name="serving_default"):
        """The raw response: `{"predictions": ...}` for `instances`, `{"outputs": ...}` for `inputs`."""
        if (instances is None) == (inputs is None):
            raise ValueError("give exactly one of instances= (row format) and inputs= (columnar)")
        body = {"signature_name": signature_name}
        body["instances" if instances is not None else "inputs"] = instances if instances is not None else inputs
        return self._send("POST", self._model_url() + ":predict", body)

    def predict_pairs(self, text_a, text_b, signature_name="serving_default"):
        """Class probabilities (or the several outputs' objects) of text pairs, one row per pair."""
        rows = [{"text_a": a, "text_b": b} for a, b in zip(text_a, text_b, strict=True)]
        return self.predict(instances=rows, signature_name=signature_name)["predictions"]

    def search(self, queries, k=10, rerank=True):
        """POST /v1/search (this project's server): one result list per query."""
        return self._send("POST", f"{self.url}/v1/search", {"queries": list(queries), "k": k, "rerank": rerank})["results"]


class GrpcClient:
    """TF Serving's gRPC PredictionService (port 8500 by default)."""

    def __init__(self, target="localhost:8500", model=None, version=None, timeout=10.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.model, self.version, self.timeout = model, version, timeout
        self.channel = grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    @staticmethod
    def request(model, inputs, signature_name="serving_default", version=None):
        """A `predict_pb2.PredictRequest`: `inputs` maps input names to lists / arrays (strings ->
        DT_STRING, ints -> DT_INT32 as the signatures declare, floats -> DT_FLOAT)."""
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        req.model_spec.name = model
        req.model_spec.signature_name = signature_name
        if version is not None:
            req.model_spec.version.value = int(version)
        for name, value in inputs.items():
            arr = np.asarray(value)
            if arr.dtype.kind in "US":
                proto = tf.make_tensor_proto([str(v).encode("utf-8") for v in arr.ravel()], dtype=tf.string,
                                             shape=arr.shape)
            elif arr.dtype.kind in "iu":
                proto = tf.make_tensor_proto(arr.astype(np.int32), dtype=tf.int32)
            else:
                proto = tf.make_tensor_proto(arr.astype(np.float32), dtype=tf.float32)
            req.inputs[name].CopyFrom(proto)
        return req

    def predict(self, inputs, signature_name="serving_default"):
        """Output name -> numpy array."""
        import grpc
        import tensorflow as tf

        req = self.request(self.model, inputs, signature_name, self.version)
        try:
            resp = self.stub.Predict(req, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ServingError(e.code().name, e.details()) from None
        return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}

    def close(self):
        self.channel.close()
