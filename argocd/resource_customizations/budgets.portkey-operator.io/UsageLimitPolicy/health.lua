-- Argo CD health check for portkey-budget-operator resources (identical for UsageLimitPolicy,
-- RateLimitPolicy, WorkspaceBudget and ApiKeyBudget). Reads the conditions the operator sets:
-- Stalled=True -> Degraded, paused or dry-run -> Suspended, Reconciling=True or an older
-- observedGeneration -> Progressing, Ready=True -> Healthy.
local hs = {}
local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end
local function text(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

if obj.metadata.deletionTimestamp ~= nil then
  local stalled = condition("Stalled")
  if stalled ~= nil and stalled.status == "True" then
    hs.status = "Degraded"
    hs.message = text(stalled)
    return hs
  end
  hs.status = "Progressing"
  hs.message = "Deleting: the operator archives or releases the Portkey objects"
  return hs
end
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
if obj.metadata.generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled)
  return hs
end
local synced = condition("Synced")
if synced ~= nil and (synced.reason == "ReconciliationPaused" or synced.reason == "DryRun") then
  hs.status = "Suspended"
  hs.message = text(synced)
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = text(reconciling)
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
if ready ~= nil and ready.reason == "OutOfSync" then
  hs.status = "Degraded"
  hs.message = text(ready)
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = text(ready)
else
  hs.message = "Waiting for the operator"
end
return hs
