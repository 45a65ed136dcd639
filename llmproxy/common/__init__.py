"""What every stage shares and no stage owns: the proxy's own error family
(:mod:`~llmproxy.common.errors`), masking of secrets (:mod:`~llmproxy.common.masking`), the rules a
client's session id must follow (:mod:`~llmproxy.common.clientids`), a rate-limited log
message (:mod:`~llmproxy.common.ratelimit`), logged text made safe to show
(:mod:`~llmproxy.common.visible`) and the crash points of the fault-injection tests
(:mod:`~llmproxy.common.faults`). Small, pure, no state.

May import: nothing else.
Must not be imported by: nothing; it is the bottom of the stack.
"""
