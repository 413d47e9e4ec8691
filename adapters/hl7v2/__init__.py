"""HL7 v2 intake: MLLP listener, file drop, header check, ACKs, hl7apy parsing, v2→FHIR R4.

Modules are the concepts: ``framing`` (MLLP frames), ``header`` (fast MSH check), ``ack``
(ACK/NAK), ``mllp`` (asyncio listener with group-commit sink), ``files`` (file drop),
``parse`` (hl7apy wrapper), ``datatypes`` (v2 datatype → FHIR datatype), ``convert``
(YAML-driven converter, mappings in ``mappings/hl7v2/``).
"""
