from ray.data import Dataset


class vLLMEngineProcessorConfig:  # noqa: N801 (Ray's name)
    def __init__(self, **kwargs):
        self.kwargs = kwargs


def build_processor(config, preprocess, postprocess):
    def run(dataset: Dataset) -> Dataset:
        rows = [preprocess(row) for row in dataset.rows]
        answered = [{**row, "generated_text": f"<{row['prompt']}|{row['sampling_params']['seed']}>"} for row in rows]
        return Dataset(postprocess(row) for row in reversed(answered))
    return run
