// Process-wide switches: the Ctrl-C flag that long operations poll between batches.
#pragma once

namespace cnclip {

// Installs SIGINT/SIGTERM handlers that set the interrupt flag; a second signal ends the process
// at once (the default action).
void install_interrupt_handlers();
bool interrupt_requested();
void request_interrupt();  // what the handler does; also for tests

}  // namespace cnclip
