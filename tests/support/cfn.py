"""The CloudFormation template in deploy/, rendered offline: parameters, conditions and the intrinsic
functions it uses resolved for given parameter values, as CloudFormation would before creating anything.

So tests can read the exact policies, task definitions and tables a deployment would get, without AWS
(``tests/deploy/test_stack.py`` also deploys the data plane into the local AWS). A resource's ``Ref`` and
``Arn`` are derived from its name property; generated names (roles, keys) get a stable stand-in.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str  # type: ignore[import-untyped]

from worker.config import Settings

TEMPLATE = Path(__file__).parent.parent.parent / "deploy" / "fleet-ingest.yaml"

ACCOUNT = "123456789012"
REGION = "us-east-1"

TEST_PARAMETERS: Mapping[str, str] = {
    "ApplicationName": "fleet-ingest",
    "StreamName": "vehicle-telemetry",
    "TablePrefix": "",
    "ArchiveBucketName": "fleet-telemetry-archive",
    "VinKeyAlias": "alias/fleet-ingest-vin",
    "PseudonymSecretName": "fleet-ingest/pseudonym-key",
    "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet-ingest:1",
    "VpcId": "vpc-0123456789abcdef0",
    "SubnetIds": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
    "OperatorPrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/oncall",
    "AdminPrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/privacy-officer",
    "AlarmTopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:oncall",
}
"""The names the local AWS uses by default (Settings' defaults, moto's account): the rendered policies
name the resources a worker configured with those defaults touches."""


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    template, problems = decode_str(path.read_text())
    if problems or template is None:
        raise ValueError(f"{path.name} does not parse: {problems}")
    return dict(template)


_ARN_FORMATS = {
    "AWS::DynamoDB::Table": ("TableName", "arn:aws:dynamodb:{region}:{account}:table/{name}"),
    "AWS::Kinesis::Stream": ("Name", "arn:aws:kinesis:{region}:{account}:stream/{name}"),
    "AWS::S3::Bucket": ("BucketName", "arn:aws:s3:::{name}"),
    "AWS::Logs::LogGroup": ("LogGroupName", "arn:aws:logs:{region}:{account}:log-group:{name}:*"),
    "AWS::ECS::Cluster": ("ClusterName", "arn:aws:ecs:{region}:{account}:cluster/{name}"),
    "AWS::CloudWatch::Alarm": ("AlarmName", "arn:aws:cloudwatch:{region}:{account}:alarm:{name}"),
    "AWS::SQS::Queue": ("QueueName", "arn:aws:sqs:{region}:{account}:{name}"),
}


@dataclass(frozen=True)
class Rendered:
    parameters: dict[str, Any]
    conditions: dict[str, bool]
    resources: dict[str, dict[str, Any]]
    """Logical id -> the resource (Type, Properties, ...) with every intrinsic resolved; resources whose
    condition is false are left out."""
    outputs: dict[str, Any]
    arns: dict[str, str]
    """Logical id -> the resource's ARN as rendered (``Fn::GetAtt [id, Arn]``)."""

    def of_type(self, type_: str) -> dict[str, dict[str, Any]]:
        return {name: r["Properties"] for name, r in self.resources.items() if r["Type"] == type_}

    def properties(self, logical_id: str) -> dict[str, Any]:
        properties: dict[str, Any] = self.resources[logical_id]["Properties"]
        return properties

    def policy(self, role: str) -> dict[str, Any]:
        """A role's identity policy: the statements of its inline policies and of the
        ``AWS::IAM::RolePolicy`` resources attached to it, as one document."""
        documents = [p["PolicyDocument"] for p in self.properties(role).get("Policies", [])]
        documents += [
            p["PolicyDocument"]
            for p in self.of_type("AWS::IAM::RolePolicy").values()
            if p["RoleName"] == role
        ]
        if not documents:
            raise ValueError(f"{role} has no policy")
        statements = [s for d in documents for s in d["Statement"]]
        return {"Version": documents[0]["Version"], "Statement": statements}

    def tables(self, kcl: bool = False) -> dict[str, dict[str, Any]]:
        """The data tables (schemas/tables.py), or with ``kcl`` the KCL's own three (logical ids Kcl...)."""
        return {
            name: table
            for name, table in self.of_type("AWS::DynamoDB::Table").items()
            if name.startswith("Kcl") == kcl
        }


class _Renderer:
    def __init__(self, template: Mapping[str, Any], values: Mapping[str, str], stack_name: str) -> None:
        self.template = template
        self.parameters: dict[str, Any] = {}
        for name, spec in template.get("Parameters", {}).items():
            value = values.get(name, spec.get("Default"))
            if value is None:
                raise ValueError(f"parameter {name} has no default: give it a value")
            self.parameters[name] = value.split(",") if spec["Type"] == "CommaDelimitedList" else str(value)
        self.pseudo = {
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": REGION,
            "AWS::Partition": "aws",
            "AWS::StackName": stack_name,
            "AWS::URLSuffix": "amazonaws.com",
        }
        self.conditions: dict[str, bool] = {}
        for name, expression in template.get("Conditions", {}).items():
            self.conditions[name] = bool(self.resolve(expression))
        self.resources = template["Resources"]

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return self.attribute(name, "Ref")

    def attribute(self, logical_id: str, attribute: str) -> str:
        resource = self.resources[logical_id]
        type_, properties = resource["Type"], resource.get("Properties", {})
        if type_ in _ARN_FORMATS:
            name_property, arn_format = _ARN_FORMATS[type_]
            name = str(self.resolve(properties[name_property]))
            if attribute in ("Ref", "Name", "QueueName"):
                return name
            return arn_format.format(region=REGION, account=ACCOUNT, name=name)
        if type_ == "AWS::KMS::Key":
            key_id = f"{logical_id.lower()}-id"
            return key_id if attribute == "Ref" else f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"
        if type_ == "AWS::IAM::Role":
            return logical_id if attribute == "Ref" else f"arn:aws:iam::{ACCOUNT}:role/{logical_id}"
        if type_ == "AWS::Kinesis::StreamConsumer" and attribute in ("ConsumerARN", "Arn"):
            # stream/<stream>/consumer/<name>:<creation time>; a stand-in for the time, as for key ids.
            stream_arn, name = (self.resolve(properties[p]) for p in ("StreamARN", "ConsumerName"))
            return f"{stream_arn}/consumer/{name}:1700000000"
        if type_ == "AWS::ECS::Service" and attribute == "Name":
            return str(self.resolve(properties["ServiceName"]))
        return f"arn:aws:{type_.split('::')[1].lower()}:{REGION}:{ACCOUNT}:{logical_id}"

    def sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name and name.split(".")[0] in self.resources:
                logical_id, attribute = name.split(".", 1)
                return self.attribute(logical_id, attribute)
            return str(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", value, text)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.resolve(item) for item in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), *_ = node.items()
            if key == "Ref":
                return _NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg, {})
                text, variables = arg
                return self.sub(text, {k: self.resolve(v) for k, v in variables.items()})
            if key == "Fn::GetAtt":
                logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.attribute(logical_id, attribute)
            if key == "Fn::Join":
                separator, items = arg
                return separator.join(str(i) for i in self.resolve(items))
            if key == "Fn::FindInMap":
                mapping, top, second = (str(self.resolve(a)) for a in arg)
                return self.template["Mappings"][mapping][top][second]
            if key == "Fn::If":
                condition, when_true, when_false = arg
                return self.resolve(when_true if self.conditions[condition] else when_false)
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if key == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if key == "Condition":
                return self.conditions[arg]
            if key.startswith("Fn::"):
                raise ValueError(f"{key} is not rendered here: add it to tests/support/cfn.py")
        resolved = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}


_NO_VALUE = object()


STACK_NAME = "fleet-ingest"


@functools.cache
def _parsed(path: Path, mtime_ns: int) -> dict[str, Any]:
    """The template parsed once per version of the file (rendering never changes it)."""
    return load_template(path)


def render(
    values: Mapping[str, str] = TEST_PARAMETERS, path: Path = TEMPLATE, stack_name: str = STACK_NAME
) -> Rendered:
    renderer = _Renderer(_parsed(path, path.stat().st_mtime_ns), values, stack_name)
    resources = {
        name: renderer.resolve(resource)
        for name, resource in renderer.resources.items()
        if renderer.conditions.get(resource.get("Condition", ""), True)
    }
    outputs = {
        name: renderer.resolve(output["Value"])
        for name, output in renderer.template.get("Outputs", {}).items()
        if renderer.conditions.get(output.get("Condition", ""), True)
    }
    arns = {name: renderer.attribute(name, "Arn") for name in resources}
    return Rendered(renderer.parameters, renderer.conditions, resources, outputs, arns)


# The ECS task definitions, as the deploy tests read them.
STACK = render()
TASK = STACK.properties("WorkerTaskDefinition")
(CONTAINER,) = TASK["ContainerDefinitions"]
ENVIRONMENT = {e["Name"]: e["Value"] for e in CONTAINER["Environment"]}
SWEEP_TASK = STACK.properties("SweepTaskDefinition")
(SWEEP_CONTAINER,) = SWEEP_TASK["ContainerDefinitions"]
SWEEP_ENVIRONMENT = {e["Name"]: e["Value"] for e in SWEEP_CONTAINER["Environment"]}


def settings_variables() -> set[str]:
    """Every environment variable Settings reads."""
    names = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        names |= {str(c) for c in choices} if choices else {f"FLEET_{name.upper()}"}
    return names


def settings_of(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    return Settings()
