"""{{ cookiecutter.description }}"""

from metaflow import FlowSpec, Parameter, project, resources, retry, step


@project(name="{{ cookiecutter.project }}")
class {{ cookiecutter.flow_name }}(FlowSpec):
    """Owner: {{ cookiecutter.owner }} ({{ cookiecutter.team }})."""

    scale = Parameter("scale", default=1.0, help="multiplies every shard's result")

    @step
    def start(self):
        self.shards = list(range(4))
        self.next(self.train, foreach="shards")

    @retry(times=2)
    @resources(cpu=1, memory=4096)
    @step
    def train(self):
        self.score = (self.input + 1) * self.scale
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.score for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print(f"total score: {self.total}")


if __name__ == "__main__":
    {{ cookiecutter.flow_name }}()
