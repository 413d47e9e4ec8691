"""What the engine knows about FHIR types without loading a FHIR model.

Resources are plain JSON dicts, so a value's type is only known from the JSON key it came
from (``valueCoding`` is a Coding) or, for primitives, from its Python type and shape.
"""

from __future__ import annotations

import re
from typing import Any

# Base names of choice elements (``value[x]``, ``performed[x]``, ...) in FHIR R4B and R5.
# Derived from the ``one_of_many`` metadata of fhir.resources 8.3 (R4B and R5 models); R4
# has no names beyond these. Navigating one of these names on a dict that lacks the plain
# key looks for ``name`` + type suffix; other missing names cost a single dict lookup.
CHOICE_BASES = frozenset({
    "abatement", "actor", "additive", "address", "age", "allowed", "amount", "answer",
    "artifact", "asNeeded", "author", "born", "bounds", "characteristic", "chargeItem",
    "citeAs", "code", "collected", "concentration", "content", "cost", "coverage", "created",
    "date", "deceased", "defaultValue", "definition", "detail", "diagnosis", "dose",
    "doseNumber", "due", "duration", "effective", "endpoint", "entity", "event", "example",
    "fastingStatus", "fixed", "generatedBy", "identified", "indication", "instance",
    "instances", "instantiates", "instruction", "item", "legallyBinding", "link", "location",
    "manufacturer", "maxValue", "measureScore", "medication", "minValue", "minimumVolume",
    "module", "multipleBirth", "name", "network", "occurence", "occurred", "occurrence",
    "offset", "onset", "participantEffective", "pattern", "performed", "period",
    "presentation", "probability", "procedure", "product", "quantity", "rate", "reported",
    "scheduled", "sequence", "seriesDoses", "serviced", "source", "sourceScope", "start",
    "statusReason", "strength", "structureProfile", "studyEffective", "subject", "substance",
    "substanceDefinition", "target", "targetItem", "targetScope", "time", "timing", "topic",
    "used", "value", "versionAlgorithm", "when",
})

PRIMITIVE_TYPES = frozenset({
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
    "instant", "integer", "integer64", "markdown", "oid", "positiveInt", "string", "time",
    "unsignedInt", "uri", "url", "uuid", "xhtml",
})

# Types a choice element can take (the JSON key suffixes), R4B + R5.
CHOICE_TYPES = frozenset({
    "Address", "Age", "Annotation", "Attachment", "Availability", "CodeableConcept",
    "CodeableReference", "Coding", "ContactDetail", "ContactPoint", "Contributor", "Count",
    "DataRequirement", "Distance", "Dosage", "Duration", "Expression",
    "ExtendedContactDetail", "HumanName", "Identifier", "Meta", "Money",
    "ParameterDefinition", "Period", "Quantity", "Range", "Ratio", "RatioRange", "Reference",
    "RelatedArtifact", "SampledData", "Signature", "Timing", "TriggerDefinition",
    "UsageContext",
}) | (PRIMITIVE_TYPES - {"xhtml"})

# Complex datatypes that are not resources (used to tell ``ofType(Patient)`` from
# ``ofType(Coding)`` on a dict).
COMPLEX_TYPES = (CHOICE_TYPES - PRIMITIVE_TYPES) | frozenset({
    "BackboneElement", "Element", "Extension", "Narrative", "MoneyQuantity", "SimpleQuantity",
    "ElementDefinition", "MarketingStatus", "ProductShelfLife", "Population",
    "ProdCharacteristic", "SubstanceAmount", "VirtualServiceDetail", "MonetaryComponent",
    "BackboneType", "DataType", "PrimitiveType", "Base",
})

# Resource type names of FHIR R4, R4B and R5 (from the fhir.resources 8.3 R4B and R5 models,
# plus the R4-only ones), so ``ofType(Pateint)`` is a compile error rather than empty.
RESOURCE_TYPES = frozenset({
    "Account", "ActivityDefinition", "ActorDefinition", "AdministrableProductDefinition",
    "AdverseEvent", "AllergyIntolerance", "Appointment", "AppointmentResponse",
    "ArtifactAssessment", "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct",
    "BiologicallyDerivedProductDispense", "BodyStructure", "Bundle", "CanonicalResource",
    "CapabilityStatement", "CarePlan", "CareTeam", "CatalogEntry", "ChargeItem",
    "ChargeItemDefinition", "Citation", "Claim", "ClaimResponse", "ClinicalImpression",
    "ClinicalUseDefinition", "CodeSystem", "Communication", "CommunicationRequest",
    "CompartmentDefinition", "Composition", "ConceptMap", "Condition",
    "ConditionDefinition", "Consent", "Contract", "Coverage", "CoverageEligibilityRequest",
    "CoverageEligibilityResponse", "DetectedIssue", "Device", "DeviceAssociation",
    "DeviceDefinition", "DeviceDispense", "DeviceMetric", "DeviceRequest", "DeviceUsage",
    "DeviceUseStatement", "DiagnosticReport", "DocumentManifest", "DocumentReference",
    "DomainResource", "EffectEvidenceSynthesis", "Encounter", "EncounterHistory",
    "Endpoint", "EnrollmentRequest", "EnrollmentResponse", "EpisodeOfCare",
    "EventDefinition", "Evidence", "EvidenceReport", "EvidenceVariable", "ExampleScenario",
    "ExplanationOfBenefit", "FamilyMemberHistory", "Flag", "FormularyItem", "GenomicStudy",
    "Goal", "GraphDefinition", "Group", "GuidanceResponse", "HealthcareService",
    "ImagingSelection", "ImagingStudy", "Immunization", "ImmunizationEvaluation",
    "ImmunizationRecommendation", "ImplementationGuide", "Ingredient", "InsurancePlan",
    "InventoryItem", "InventoryReport", "Invoice", "Library", "Linkage", "List", "Location",
    "ManufacturedItemDefinition", "Measure", "MeasureReport", "Media", "Medication",
    "MedicationAdministration", "MedicationDispense", "MedicationKnowledge",
    "MedicationRequest", "MedicationStatement", "MedicinalProduct",
    "MedicinalProductAuthorization", "MedicinalProductContraindication",
    "MedicinalProductDefinition", "MedicinalProductIndication",
    "MedicinalProductIngredient", "MedicinalProductInteraction",
    "MedicinalProductManufactured", "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical", "MedicinalProductUndesirableEffect",
    "MessageDefinition", "MessageHeader", "MetadataResource", "MolecularSequence",
    "NamingSystem", "NutritionIntake", "NutritionOrder", "NutritionProduct", "Observation",
    "ObservationDefinition", "OperationDefinition", "OperationOutcome", "Organization",
    "OrganizationAffiliation", "PackagedProductDefinition", "Parameters", "Patient",
    "PaymentNotice", "PaymentReconciliation", "Permission", "Person", "PlanDefinition",
    "Practitioner", "PractitionerRole", "Procedure", "Provenance", "Questionnaire",
    "QuestionnaireResponse", "RegulatedAuthorization", "RelatedPerson", "RequestGroup",
    "RequestOrchestration", "Requirements", "ResearchDefinition",
    "ResearchElementDefinition", "ResearchStudy", "ResearchSubject", "Resource",
    "RiskAssessment", "RiskEvidenceSynthesis", "Schedule", "SearchParameter",
    "ServiceRequest", "Slot", "Specimen", "SpecimenDefinition", "StructureDefinition",
    "StructureMap", "Subscription", "SubscriptionStatus", "SubscriptionTopic", "Substance",
    "SubstanceDefinition", "SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein",
    "SubstanceReferenceInformation", "SubstanceSourceMaterial", "SubstanceSpecification",
    "SupplyDelivery", "SupplyRequest", "Task", "TerminologyCapabilities", "TestPlan",
    "TestReport", "TestScript", "Transport", "ValueSet", "VerificationResult",
    "VisionPrescription",
})

# FHIR specialisations: ofType(Quantity) also selects valueAge, valueDuration, ...
SUBTYPES: dict[str, tuple[str, ...]] = {
    "Quantity": ("Quantity", "Age", "Count", "Distance", "Duration"),
    "string": ("string", "code", "id", "markdown"),
    "uri": ("uri", "url", "canonical", "oid", "uuid"),
    "integer": ("integer", "positiveInt", "unsignedInt"),
}

_SYSTEM_TYPES = {
    "String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal",
    "Date": "date", "DateTime": "dateTime", "Time": "time", "Quantity": "Quantity",
    "Long": "integer64",
}
_INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt"})
_STRING_TYPES = frozenset({"string", "code", "id", "markdown", "uri", "url", "canonical",
                           "oid", "uuid", "base64Binary", "xhtml", "integer64"})

DATE_RE = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?$")
DATETIME_RE = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})"
    r"(?:T([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})(\.[0-9]+)?)?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?$"
)
TIME_RE = re.compile(r"([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})(\.[0-9]+)?)?)?$")


def normalize_type(name: str) -> str | None:
    """``FHIR.Coding`` -> ``Coding``, ``System.String`` -> ``string``; None if unknown."""
    if name.startswith("FHIR."):
        name = name[5:]
    elif name.startswith("System."):
        return _SYSTEM_TYPES.get(name[7:])
    if name in _SYSTEM_TYPES and name not in COMPLEX_TYPES:
        return _SYSTEM_TYPES[name]
    if name in PRIMITIVE_TYPES or name in COMPLEX_TYPES or name in RESOURCE_TYPES:
        return name
    return None


def choice_suffixes(type_name: str) -> tuple[str, ...]:
    """JSON key suffixes under which a choice element of ``type_name`` (or a subtype) is found."""
    return tuple(t[0].upper() + t[1:] for t in SUBTYPES.get(type_name, (type_name,)))


def suffix_type(suffix: str) -> str:
    """``DateTime`` -> ``dateTime``; ``Coding`` -> ``Coding``."""
    lowered = suffix[0].lower() + suffix[1:]
    return lowered if lowered in PRIMITIVE_TYPES else suffix


def is_resource_type(type_name: str) -> bool:
    return type_name in RESOURCE_TYPES


def value_matches(value: Any, type_name: str) -> bool:
    """Whether a JSON value can be of ``type_name`` when its JSON key gives no type.

    Primitives are checked by Python type and, for date/time types, by shape; a dict matches
    a resource type by ``resourceType`` and a complex datatype when it is not a resource.
    """
    cls = value.__class__
    if type_name == "boolean":
        return cls is bool
    if type_name in _INTEGER_TYPES:
        return cls is int
    if type_name == "decimal":
        return cls is float or cls is int
    if type_name in _STRING_TYPES:
        return cls is str
    if type_name == "date":
        return cls is str and DATE_RE.match(value) is not None
    if type_name in ("dateTime", "instant"):
        return cls is str and DATETIME_RE.match(value) is not None
    if type_name == "time":
        return cls is str and TIME_RE.match(value) is not None
    if cls is not dict:
        return False
    if is_resource_type(type_name):
        return bool(value.get("resourceType") == type_name)
    return "resourceType" not in value
