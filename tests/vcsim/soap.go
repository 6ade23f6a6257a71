package main

// SOAP answers written by our front handler, in the shape the simulator and
// vCenter use, so that pyVmomi and govmomi decode them.

import (
	"bytes"
	"fmt"
	"net/http"

	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

const envelopeOpen = `<?xml version="1.0" encoding="UTF-8"?>` + "\n" +
	`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/"` +
	` xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"` +
	` xmlns:xsd="http://www.w3.org/2001/XMLSchema"` +
	` xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`

const envelopeClose = `</soapenv:Body></soapenv:Envelope>`

func escape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func writeSOAP(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(envelopeOpen + body + envelopeClose))
}

// writeDiskChangeInfo answers a changed-block query (method: its SOAP name).
func writeDiskChangeInfo(w http.ResponseWriter, method string, info *types.DiskChangeInfo) {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<%sResponse xmlns="urn:vim25"><returnval>`, method)
	fmt.Fprintf(&b, "<startOffset>%d</startOffset><length>%d</length>", info.StartOffset, info.Length)
	for _, a := range info.ChangedArea {
		fmt.Fprintf(&b, "<changedArea><start>%d</start><length>%d</length></changedArea>", a.Start, a.Length)
	}
	fmt.Fprintf(&b, `</returnval></%sResponse>`, method)
	writeSOAP(w, http.StatusOK, b.String())
}

// writeFault answers with a vSphere fault (HTTP 500, as vCenter does).
func writeFault(w http.ResponseWriter, f *cbtFault) {
	var detail string
	switch f.kind {
	case "InvalidArgument":
		detail = "<invalidProperty>" + escape(f.field) + "</invalidProperty>"
	case "SystemError":
		detail = "<reason>" + escape(f.field) + "</reason>"
	case "FileFault":
		detail = "<file>" + escape(f.field) + "</file>"
	case "ManagedObjectNotFound":
		if f.obj != nil {
			detail = fmt.Sprintf(`<obj type="%s">%s</obj>`, escape(f.obj.Type), escape(f.obj.Value))
		}
	}
	body := fmt.Sprintf(`<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring>`+
		`<detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault>`,
		escape(f.message), f.kind, f.kind, detail, f.kind)
	writeSOAP(w, http.StatusInternalServerError, body)
}

// copyConfig deep-copies a VM config by an XML round trip, which keeps the
// concrete types of its interface fields (devices, backings).
func copyConfig(src *types.VirtualMachineConfigInfo) (types.VirtualMachineConfigInfo, error) {
	var dst types.VirtualMachineConfigInfo
	data, err := xml.Marshal(src)
	if err != nil {
		return dst, err
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.TypeFunc = types.TypeFunc()
	err = dec.Decode(&dst)
	return dst, err
}
